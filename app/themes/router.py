from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, status

from app.deps import AdminActor, AdminUser, SessionDep, SettingsDep
from app.themes import service
from app.themes.models import Template, Theme
from app.themes.schemas import (
    RenderIn,
    RenderOut,
    TemplateIn,
    TemplateList,
    TemplateOut,
    ThemeIn,
    ThemeList,
    ThemeOut,
)

router = APIRouter(tags=["templates and themes"])

_MERGE_PATCH = "A JSON merge patch: the fields given change, `null` resets one."


def _template(row: Template) -> TemplateOut:
    return TemplateOut.model_validate(row, from_attributes=True)


def _theme(row: Theme) -> ThemeOut:
    return ThemeOut.model_validate(row, from_attributes=True)


@router.get("/api/v1/templates", response_model=TemplateList)
async def list_templates(_: AdminUser, session: SessionDep) -> TemplateList:
    return TemplateList(items=[_template(t) for t in await service.list_templates(session)])


@router.post("/api/v1/templates", response_model=TemplateOut, status_code=status.HTTP_201_CREATED)
async def create_template(body: TemplateIn, actor: AdminActor, session: SessionDep) -> TemplateOut:
    """Store a template; a part that does not compile is a 422 naming it and the line."""
    return _template(await service.create_template(session, body, actor))


@router.get("/api/v1/templates/{name}", response_model=TemplateOut)
async def get_template(name: str, _: AdminUser, session: SessionDep) -> TemplateOut:
    return _template(await service.get_template(session, name))


@router.put("/api/v1/templates/{name}", response_model=TemplateOut)
async def replace_template(
    name: str, body: TemplateIn, actor: AdminActor, session: SessionDep
) -> TemplateOut:
    return _template(await service.replace_template(session, name, body, actor))


@router.patch("/api/v1/templates/{name}", response_model=TemplateOut, description=_MERGE_PATCH)
async def patch_template(
    name: str, actor: AdminActor, session: SessionDep, body: dict[str, Any] = Body()
) -> TemplateOut:
    return _template(await service.patch_template(session, name, body, actor))


@router.delete("/api/v1/templates/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_template(name: str, actor: AdminActor, session: SessionDep) -> None:
    await service.delete_template(session, name, actor)


@router.post("/api/v1/templates/{name}/render", response_model=RenderOut)
async def render_template(
    name: str, body: RenderIn, _: AdminUser, session: SessionDep, settings: SettingsDep
) -> RenderOut:
    """Render with `data` (optionally inside `theme`) and return the result; nothing is sent."""
    return await service.preview(session, name, body, settings.max_message_bytes)


@router.get("/api/v1/themes", response_model=ThemeList)
async def list_themes(_: AdminUser, session: SessionDep) -> ThemeList:
    return ThemeList(items=[_theme(t) for t in await service.list_themes(session)])


@router.post("/api/v1/themes", response_model=ThemeOut, status_code=status.HTTP_201_CREATED)
async def create_theme(body: ThemeIn, actor: AdminActor, session: SessionDep) -> ThemeOut:
    """Store a theme; each layout needs a `{{ content }}` slot and must render with its data."""
    return _theme(await service.create_theme(session, body, actor))


@router.get("/api/v1/themes/{name}", response_model=ThemeOut)
async def get_theme(name: str, _: AdminUser, session: SessionDep) -> ThemeOut:
    return _theme(await service.get_theme(session, name))


@router.put("/api/v1/themes/{name}", response_model=ThemeOut)
async def replace_theme(
    name: str, body: ThemeIn, actor: AdminActor, session: SessionDep
) -> ThemeOut:
    return _theme(await service.replace_theme(session, name, body, actor))


@router.patch("/api/v1/themes/{name}", response_model=ThemeOut, description=_MERGE_PATCH)
async def patch_theme(
    name: str, actor: AdminActor, session: SessionDep, body: dict[str, Any] = Body()
) -> ThemeOut:
    return _theme(await service.patch_theme(session, name, body, actor))


@router.delete("/api/v1/themes/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_theme(name: str, actor: AdminActor, session: SessionDep) -> None:
    """Refused (409) while a server profile uses the theme."""
    await service.delete_theme(session, name, actor)
