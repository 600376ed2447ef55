"""Templates and themes (with a live preview of the unsaved edit) and the branding sender, through
app.themes.service and app.branding.service as the API routes use them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from app.branding import service as branding
from app.branding.schemas import BrandingBody
from app.console.deps import Parts, PartsDep
from app.console.web import (
    PREFIX,
    CheckedForm,
    ConsoleActor,
    ConsoleAdmin,
    ConsoleRoute,
    Form,
    problems,
    redirect,
    render,
    status_of,
    templates,
)
from app.db import transaction
from app.errors import AppError, Invalid
from app.identity import Actor
from app.themes import service as themes
from app.themes.schemas import RenderIn, TemplateIn, ThemeIn

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

PREVIEW_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; sandbox; "
    "frame-ancestors 'self'"
)
"""A preview shows the message as a mail client would: its inline styles apply, no script runs
(sandbox), and only the console's own pages may frame it."""


def _optional(form: Form, key: str) -> str | None:
    value = form.data.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _template_in(form: Form, name: str | None) -> TemplateIn:
    return TemplateIn.model_validate(
        {
            "name": name,
            "description": form.text("description"),
            "subject": _optional(form, "subject"),
            "text": _optional(form, "text"),
            "html": _optional(form, "html"),
        }
    )


def _theme_in(form: Form, name: str | None) -> ThemeIn:
    try:
        colors = json.loads(form.text("colors") or "{}")
    except json.JSONDecodeError as err:
        raise Invalid(f"colors must be a JSON object: {err.msg}", field="colors") from err
    return ThemeIn.model_validate(
        {
            "name": name,
            "description": form.text("description"),
            "html": form.text("html"),
            "text": _optional(form, "text"),
            "logoUrl": _optional(form, "logoUrl"),
            "colors": colors,
            "footer": _optional(form, "footer"),
        }
    )


@router.get("/templates")
async def list_content(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    async with parts.sessions() as session:
        found = await themes.list_templates(session)
        layouts = await themes.list_themes(session)
    return render(request, "templates.html", section="templates", templates=found, themes=layouts)


async def _edit_page(
    request: Request,
    parts: PartsDep,
    kind: str,
    name: str | None,
    values: dict[str, Any],
    status: int = 200,
    **extra: Any,
) -> Response:
    async with parts.sessions() as session:
        theme_names = [t.name for t in await themes.list_themes(session)]
    return render(
        request,
        f"{kind}_edit.html",
        status,
        section="templates",
        name=name,
        values=values,
        theme_names=theme_names,
        **extra,
    )


@router.get("/templates/new")
async def new_template(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    return await _edit_page(request, parts, "template", None, {"data": "{}"})


@router.get("/templates/{name}")
async def edit_template(
    request: Request, name: str, _: ConsoleAdmin, parts: PartsDep, saved: int = 0
) -> Response:
    async with parts.sessions() as session:
        row = await themes.get_template(session, name)
    values = {k: getattr(row, k) or "" for k in ("description", "subject", "text", "html")}
    return await _edit_page(
        request,
        parts,
        "template",
        name,
        values | {"data": "{}"},
        notice="Saved." if saved else None,
    )


@router.post("/templates/new")
async def create_template(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    return await _save_template(request, form, parts, None, actor)


@router.post("/templates/{name}")
async def update_template(
    request: Request, name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    return await _save_template(request, form, parts, name, actor)


async def _save_template(
    request: Request, form: Form, parts: Parts, name: str | None, actor: Actor
) -> Response:
    async def store(session: AsyncSession, target: str | None) -> None:
        body = _template_in(form, target)
        if name is None:
            await themes.create_template(session, body, actor)
        else:
            await themes.replace_template(session, name, body, actor)

    return await _save(request, form, parts, "template", name, store)


async def _save(
    request: Request,
    form: Form,
    parts: Parts,
    kind: str,
    name: str | None,
    store: Callable[[AsyncSession, str | None], Awaitable[None]],
) -> Response:
    """Store a template or theme (`kind`) from its form: back to its page when saved, else the
    form again with what was wrong, field by field."""
    target = name or form.text("name")
    try:
        async with transaction(parts.sessions) as session:
            await store(session, target or None)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        values = {k: v for k, v in form.data.items() if isinstance(v, str)}
        return await _edit_page(
            request,
            parts,
            kind,
            name,
            values,
            status_of(err),
            form_error=summary,
            errors=fields,
        )
    return redirect(f"{PREFIX}/{kind}s/{target}?saved=1")


@router.post("/templates/{name}/preview")
async def preview_template(
    request: Request, name: str, _: ConsoleAdmin, form: CheckedForm, parts: PartsDep
) -> Response:
    """The form's unsaved template rendered with its data (and theme), for the preview frame."""
    try:
        data = json.loads(form.text("data") or "{}")
        if not isinstance(data, dict):
            raise Invalid("data must be a JSON object", field="data")
        draft = themes.draft_template(_template_in(form, name))
        async with parts.sessions() as session:
            out = await themes.preview_of(
                session,
                draft,
                RenderIn(data=data, theme=_optional(form, "theme")),
                parts.settings.max_message_bytes,
            )
        page = templates.get_template("preview.html").render(
            subject=out.subject, text=out.text, html=Markup(out.html or ""), error=None
        )
        status = 200
    except json.JSONDecodeError as err:
        page = templates.get_template("preview.html").render(error=f"data: {err.msg}")
        status = 422
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        error = "; ".join(f"{k}: {v}" for k, v in fields.items()) or summary
        page = templates.get_template("preview.html").render(error=error)
        status = status_of(err)
    return Response(
        page,
        status,
        media_type="text/html",
        headers={"Content-Security-Policy": PREVIEW_CSP, "X-Frame-Options": "SAMEORIGIN"},
    )


@router.get("/themes/new")
async def new_theme(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    return await _edit_page(request, parts, "theme", None, {"colors": "{}"})


@router.get("/themes/{name}")
async def edit_theme(
    request: Request, name: str, _: ConsoleAdmin, parts: PartsDep, saved: int = 0
) -> Response:
    async with parts.sessions() as session:
        row = await themes.get_theme(session, name)
    values = {
        "description": row.description,
        "html": row.html,
        "text": row.text or "",
        "logoUrl": row.logo_url or "",
        "colors": json.dumps(row.colors or {}),
        "footer": row.footer or "",
    }
    return await _edit_page(
        request, parts, "theme", name, values, notice="Saved." if saved else None
    )


@router.post("/themes/new")
async def create_theme(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    return await _save_theme(request, form, parts, None, actor)


@router.post("/themes/{name}")
async def update_theme(
    request: Request, name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    return await _save_theme(request, form, parts, name, actor)


async def _save_theme(
    request: Request, form: Form, parts: Parts, name: str | None, actor: Actor
) -> Response:
    async def store(session: AsyncSession, target: str | None) -> None:
        body = _theme_in(form, target)
        if name is None:
            await themes.create_theme(session, body, actor)
        else:
            await themes.replace_theme(session, name, body, actor)

    return await _save(request, form, parts, "theme", name, store)


@router.get("/branding")
async def branding_page(
    request: Request, _: ConsoleAdmin, parts: PartsDep, saved: int = 0
) -> Response:
    async with parts.sessions() as session:
        current = branding.to_body(await branding.get_branding(session))
    values = current.emails.model_dump(by_alias=True)
    return render(
        request,
        "branding.html",
        section="branding",
        values=values,
        notice="Saved." if saved else None,
    )


@router.post("/branding")
async def save_branding(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    emails = {
        "senderEmail": _optional(form, "senderEmail"),
        "senderName": _optional(form, "senderName"),
    }
    try:
        body = BrandingBody.model_validate({"emails": emails})
        async with transaction(parts.sessions) as session:
            await branding.update_branding(session, body, actor)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        errors = {k.removeprefix("emails."): v for k, v in fields.items()}
        return render(
            request,
            "branding.html",
            status_of(err),
            section="branding",
            values=emails,
            form_error=summary,
            errors=errors,
        )
    return redirect(f"{PREFIX}/branding?saved=1")
