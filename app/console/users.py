"""Users (admin only): the API's users, roles and sender bounds through app.users.service, their
API tokens (issued, shown once, revoked) through app.users.tokens, and their console sessions,
which an admin can end."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from app.console import sessions
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
)
from app.db import transaction
from app.errors import AppError
from app.servers import service as servers
from app.users import service, tokens
from app.users.schemas import TokenCreate, TokenOut, UserCreate, UserOut, UserUpdate

router = APIRouter(prefix=f"{PREFIX}/users", route_class=ConsoleRoute, include_in_schema=False)

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _bounds(form: Form) -> dict[str, Any]:
    """allowedFrom one a line and the checked allowedServers; empty: null, the defaults."""
    entries = [line.strip() for line in form.text("allowedFrom").splitlines() if line.strip()]
    checked = [v for v in form.data.getlist("allowedServers") if isinstance(v, str)]
    return {"allowedFrom": entries or None, "allowedServers": checked or None}


async def _page(
    request: Request, parts: Parts, template: str, status: int = 200, **context: Any
) -> Response:
    async with parts.sessions() as session:
        users = await service.list_users(session)
        profiles = [
            p.name for p in (await servers.list_profiles(session, parts.profiles.box)).items
        ]
        open_sessions = await sessions.count_for(session, [u.id for u in users])
    return render(
        request,
        template,
        status,
        section="users",
        profiles=profiles,
        users=[
            (UserOut.model_validate(u, from_attributes=True), open_sessions.get(u.id, 0))
            for u in users
        ],
        **context,
    )


@router.get("")
async def list_users(request: Request, _: ConsoleAdmin, parts: PartsDep) -> Response:
    return await _page(request, parts, "users.html", values={"role": "sender"})


@router.post("")
async def create_user(
    request: Request, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    try:
        body = UserCreate.model_validate(
            {
                "name": form.text("name"),
                "role": form.text("role"),
                "password": form.text("password") or None,
            }
            | _bounds(form)
        )
        async with transaction(parts.sessions) as session:
            _user, generated = await service.create_from(session, body, actor=actor)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        values = {k: v for k, v in form.data.items() if isinstance(v, str) and k != "password"}
        return await _page(
            request,
            parts,
            "users.html",
            status_of(err),
            values=values,
            form_error=summary,
            errors=fields,
        )
    return await _page(
        request,
        parts,
        "users.html",
        values={"role": "sender"},
        notice=f"User {body.name} created.",
        generated=generated,
        created=body.name,
    )


async def _edit_page(
    request: Request, parts: Parts, name: str, status: int = 200, **context: Any
) -> Response:
    """A user's page: the edit form, its API tokens, its console sessions."""
    async with parts.sessions() as session:
        user = UserOut.model_validate(await service.get_user(session, name), from_attributes=True)
        profiles = [
            p.name for p in (await servers.list_profiles(session, parts.profiles.box)).items
        ]
        issued = [
            TokenOut.model_validate(t, from_attributes=True)
            for t in await tokens.list_tokens(session, name)
        ]
    return render(
        request,
        "user_edit.html",
        status,
        section="users",
        target=user,
        profiles=profiles,
        tokens=issued,
        **context,
    )


@router.get("/{name}")
async def edit_user(
    request: Request, name: str, _: ConsoleAdmin, parts: PartsDep, saved: int = 0
) -> Response:
    return await _edit_page(request, parts, name, notice="Saved." if saved else None)


@router.post("/{name}")
async def save_user(
    request: Request, name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    try:
        body = UserUpdate.model_validate(
            {"role": form.text("role") or None, "password": form.text("password") or None}
            | _bounds(form)
        )
        async with transaction(parts.sessions) as session:
            await service.update_user(
                session,
                name,
                role=body.role,
                password=body.password,
                allowed_from=body.allowed_from,
                allowed_servers=body.allowed_servers,
                actor=actor,
            )
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        return await _edit_page(
            request, parts, name, status_of(err), form_error=summary, errors=fields
        )
    parts.auth.changed(name)
    return redirect(f"{router.prefix}/{name}?saved=1")


@router.post("/{name}/tokens")
async def issue_token(
    request: Request, name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    """The page that answers shows the token; a reload does not."""
    expires = form.text("expiresAt")
    values = {"name": form.text("name"), "expiresAt": expires}
    # a date field: the token stops at the start of that day, UTC
    at = f"{expires}T00:00:00Z" if DATE.fullmatch(expires) else expires or None
    try:
        body = TokenCreate.model_validate(values | {"expiresAt": at})
        async with transaction(parts.sessions) as session:
            _row, token = await tokens.issue(session, name, body.name, body.expires_at, actor=actor)
    except (AppError, ValidationError) as err:
        summary, fields = problems(err)
        return await _edit_page(
            request,
            parts,
            name,
            status_of(err),
            form_error=summary,
            errors=fields,
            token_values=values,
        )
    return await _edit_page(request, parts, name, issued=token, issued_name=body.name)


@router.post("/{name}/tokens/{token_id}/revoke")
async def revoke_token(
    name: str, token_id: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    async with transaction(parts.sessions) as session:
        await tokens.revoke(session, name, token_id, actor=actor)
    parts.auth.changed(name)
    return redirect(f"{router.prefix}/{name}#tokens")


@router.post("/{name}/signout")
async def sign_out(name: str, _: ConsoleAdmin, form: CheckedForm, parts: PartsDep) -> Response:
    """End every console session of the user (its API credentials are unchanged)."""
    async with transaction(parts.sessions) as session:
        await sessions.revoke_user(session, name)
    return redirect(router.prefix)


@router.get("/{name}/delete")
async def confirm_delete(request: Request, name: str, _: ConsoleAdmin, parts: PartsDep) -> Response:
    async with parts.sessions() as session:
        user = UserOut.model_validate(await service.get_user(session, name), from_attributes=True)
    return render(request, "user_delete.html", section="users", target=user)


@router.post("/{name}/delete")
async def delete_user(
    name: str, actor: ConsoleActor, form: CheckedForm, parts: PartsDep
) -> Response:
    async with transaction(parts.sessions) as session:
        await service.delete_user(session, name, actor=actor)
    parts.auth.changed(name)
    return redirect(router.prefix)
