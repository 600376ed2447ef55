"""Mail server pages: the list, create and edit for every type, default, duplicate, delete.
Every change goes through app.servers.service, as the API's routes do."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from app.console import forms
from app.console.deps import Parts, PartsDep
from app.console.web import (
    PREFIX,
    CheckedForm,
    ConsoleActor,
    ConsoleAdmin,
    ConsoleRoute,
    problems,
    redirect,
    render,
    status_of,
)
from app.db import transaction
from app.errors import AppError, NotFound
from app.secret_fields import secret_paths
from app.servers import service, sisense
from app.servers.schemas import PROFILE_TYPES, ProfileOut
from app.themes import service as themes
from app.transports.registry import TRANSPORTS

router = APIRouter(prefix=f"{PREFIX}/servers", route_class=ConsoleRoute, include_in_schema=False)

TYPES = PROFILE_TYPES


async def _choices(parts: Parts, exclude: str | None) -> dict[str, list[tuple[str, str]]]:
    async with parts.sessions() as session:
        listed = await service.list_profiles(session, parts.profiles.box)
        names = [p.name for p in listed.items if p.name != exclude]
        themes_ = [t.name for t in await themes.list_themes(session)]
    return {"fallback": [(n, n) for n in names], "theme": [(t, t) for t in themes_]}


async def page(
    request: Request,
    parts: Parts,
    type_: str,
    values: dict[str, Any],
    *,
    profile: ProfileOut | None = None,
    status: int = 200,
    **extra: Any,
) -> Response:
    choices = await _choices(parts, profile.name if profile else None)
    return render(
        request,
        "server_edit.html",
        status,
        section="servers",
        type=type_,
        groups=[forms.Group("Profile", forms.COMMON), *forms.settings_groups(type_)],
        values=values,
        choices=choices,
        profile=profile,
        port_hint=forms.port_hint(str(values.get("settings.security") or "starttls")),
        **extra,
    )


def posted_values(form: CheckedForm, type_: str) -> dict[str, Any]:
    """What the browser sent, to show the form again as it was (never a secret)."""
    hidden = {"csrf", *(f"settings.{p}" for p in secret_paths(TRANSPORTS[type_].config))}
    return {
        key: value
        for key, value in form.data.items()
        if isinstance(value, str) and key not in hidden
    }


async def _stored(parts: Parts, name: str) -> ProfileOut:
    async with parts.sessions() as session:
        found = await service.get_profile(session, name)
        return service.to_out(found, await service.get_routing(session), parts.profiles.box)


@router.get("")
async def list_servers(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    async with parts.sessions() as session:
        profiles = await service.list_profiles(session, parts.profiles.box)
        email_server = await sisense.read(session, parts.profiles)
    return render(
        request,
        "servers.html",
        section="servers",
        profiles=profiles,
        email_server=email_server,
        types=TYPES,
    )


@router.get("/new")
async def new_server(
    request: Request, _: ConsoleAdmin, parts: PartsDep, type: str | None = None
) -> Response:
    if type not in TYPES:
        return render(request, "server_type.html", section="servers", types=TYPES)
    values: dict[str, Any] = {"settings.security": "starttls"} if type == "smtp" else {}
    return await page(request, parts, type, values)


@router.post("/new")
async def create_server(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    type_ = form.text("type")
    if type_ not in TYPES:
        raise NotFound(f"no server type {type_!r}")
    body, _paths = await forms.read(form.data, type_)
    try:
        parsed = service.PROFILE_BODY.validate_python(body)
        await service.check_host(parts.profiles, parsed.settings)
        async with transaction(parts.sessions) as session:
            created = await service.create_profile(session, parts.profiles, parsed, actor)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        return await page(
            request,
            parts,
            type_,
            posted_values(form, type_),
            status=status_of(err),
            form_error=summary,
            errors=fields,
        )
    return redirect(f"{router.prefix}/{created.name}?saved=1")


@router.get("/port-hint")
async def port_hint(request: Request, _: ConsoleAdmin) -> Response:
    """htmx: the port that goes with the chosen security mode."""
    mode = str(request.query_params.get("settings.security") or "starttls")
    return render(request, "_port_hint.html", port_hint=forms.port_hint(mode))


@router.get("/{name}")
async def edit_server(
    request: Request, name: str, _: ConsoleAdmin, parts: PartsDep, saved: int = 0
) -> Response:
    profile = await _stored(parts, name)
    values = forms.current_values(profile.model_dump(by_alias=True, mode="json"))
    return await page(
        request,
        parts,
        profile.type,
        values,
        profile=profile,
        notice="Saved." if saved else None,
    )


@router.post("/{name}")
async def save_server(
    request: Request, name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    profile = await _stored(parts, name)
    body, _paths = await forms.read(form.data, profile.type)
    body["name"] = name
    try:
        await service.check_host(parts.profiles, body.get("settings"))
        async with transaction(parts.sessions) as session:
            await service.replace_profile(session, parts.profiles, name, body, actor)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        return await page(
            request,
            parts,
            profile.type,
            posted_values(form, profile.type),
            profile=profile,
            status=status_of(err),
            form_error=summary,
            errors=fields,
        )
    return redirect(f"{router.prefix}/{name}?saved=1")


@router.post("/{name}/default")
async def make_default(
    name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    async with transaction(parts.sessions) as session:
        await service.patch_profile(session, parts.profiles, name, {"isDefault": True}, actor)
    return redirect(router.prefix)


@router.get("/{name}/delete")
async def confirm_delete(request: Request, name: str, _: ConsoleAdmin, parts: PartsDep) -> Response:
    profile = await _stored(parts, name)
    return render(request, "server_delete.html", section="servers", profile=profile)


@router.post("/{name}/delete")
async def delete_server(
    name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    async with transaction(parts.sessions) as session:
        await service.delete_profile(session, parts.profiles, name, actor)
    return redirect(router.prefix)


@router.get("/{name}/duplicate")
async def duplicate_form(request: Request, name: str, _: ConsoleAdmin, parts: PartsDep) -> Response:
    profile = await _stored(parts, name)
    return render(
        request,
        "server_duplicate.html",
        section="servers",
        profile=profile,
        secrets=forms.secrets_set(profile.model_dump(by_alias=True, mode="json")),
    )


@router.post("/{name}/duplicate")
async def duplicate_server(
    request: Request, name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    profile = await _stored(parts, name)
    dump = profile.model_dump(by_alias=True, mode="json")
    given: dict[str, Any] = {}
    for path in forms.secrets_set(dump):
        value = form.text(f"settings.{path}")
        if value:
            forms.put(given, path, value)
    try:
        async with transaction(parts.sessions) as session:
            copy = await service.duplicate_profile(
                session, parts.profiles, name, form.text("name") or None, given, actor
            )
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        return render(
            request,
            "server_duplicate.html",
            status_of(err),
            section="servers",
            profile=profile,
            secrets=forms.secrets_set(dump),
            form_error=summary,
            errors=fields,
        )
    return redirect(f"{router.prefix}/{copy.name}?saved=1")
