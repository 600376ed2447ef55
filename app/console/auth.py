"""Log in and out of the console: the API's users, password check, throttle and lockout."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console import sessions
from app.console.deps import PartsDep
from app.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    PREFIX,
    CheckedForm,
    ConsoleError,
    ConsoleRoute,
    is_tls,
    redirect,
    render,
)
from app.db import transaction
from app.deps import client_address
from app.errors import TooManyRequests, Unauthorized

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


def _next(target: str | None) -> str:
    """Where to go after logging in: a console page only (no open redirect)."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/"


def _login_page(
    request: Request, token: str, target: str, status: int = 200, error: str | None = None
) -> Response:
    response = render(request, "login.html", status, login_csrf=token, next=target, error=error)
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path=f"{PREFIX}/login",
        secure=is_tls(request, request.app.state.settings.console_trust_forwarded_proto),
    )
    return response


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    return _login_page(request, token, _next(next))


@router.post("/login")
async def login(request: Request, parts: PartsDep) -> Response:
    async with request.form() as form:
        name, password = str(form.get("name") or ""), str(form.get("password") or "")
        given, target = str(form.get("csrf") or ""), _next(str(form.get("next") or ""))
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    if not expected or not hmac.compare_digest(given, expected):
        raise ConsoleError(403, "the login form's CSRF token is missing or stale: reload the page")
    client = client_address(request)
    try:
        # passwords only: a session opened with an API token would outlive the token's revocation
        principal = await parts.auth.verify(name, password, client, accept_tokens=False)
    except Unauthorized:
        return _login_page(request, expected, target, 401, "Wrong user name or password.")
    except TooManyRequests as err:
        response = _login_page(request, expected, target, 429, err.message)
        response.headers["Retry-After"] = str(err.retry_after)
        return response
    async with transaction(parts.sessions) as session:
        token, _ = await sessions.open_session(session, principal.name, client)
    response = redirect(target)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="lax",
        path=PREFIX,
        secure=is_tls(request, parts.settings.console_trust_forwarded_proto),
    )
    response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
    return response


@router.post("/logout")
async def logout(request: Request, form: CheckedForm, parts: PartsDep) -> Response:
    async with transaction(parts.sessions) as session:
        await sessions.close(session, request.state.login.token_hash)
    response = redirect(f"{PREFIX}/login")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
