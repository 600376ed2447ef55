"""The console's plumbing: templates, the logged-in user, CSRF, HTML errors, security headers."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.console import sessions
from app.console.sessions import Login
from app.deps import SESSIONS, client_address
from app.errors import AppError, validation_details
from app.identity import Actor, Principal
from app.servers.schemas import PROFILE_TYPES

HERE = Path(__file__).parent
PREFIX = "/console"
COOKIE = "postroom_console"
LOGIN_COOKIE = "postroom_console_login"
"""The login form's CSRF token (double submit): there is no session yet to hold it."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
"""Trusted files of this package (the themes' sandbox is for users' templates)."""


class ConsoleError(Exception):
    """A console page cannot be shown: rendered as an HTML page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LoginRequired(ConsoleError):
    def __init__(self) -> None:
        super().__init__(401, "log in first")


class SecurityHeaders:
    """CSP (no inline script or style), no framing, no caching, on every /console answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                own = {name.lower() for name, _ in headers}  # a preview sets its own policy
                message["headers"] = headers + [h for h in HEADERS if h[0] not in own]
            await send(message)

        await self.app(scope, receive, with_headers)


def render(request: Request, template: str, status: int = 200, /, **context: Any) -> HTMLResponse:
    """A console page or fragment, from the package's trusted templates."""
    login: Login | None = getattr(request.state, "login", None)
    context.setdefault("errors", {})
    page = templates.get_template(template).render(
        request=request,
        login=login,
        user=login.principal if login else None,
        csrf=login.csrf if login else "",
        prefix=PREFIX,
        **context,
    )
    return HTMLResponse(page, status_code=status)


def redirect(path: str) -> RedirectResponse:
    """After a POST: 303 to the page to show (the browser GETs it; a reload does not post)."""
    return RedirectResponse(path, status_code=303)


class ConsoleRoute(APIRoute):
    """Errors of console routes become HTML pages: a login redirect, or the error with its
    status; an AppError from a service shows its message (the API would answer it as JSON)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = request.url.path
                if request.url.query:
                    target += f"?{request.url.query}"
                response = redirect(f"{PREFIX}/login?next={quote(target, safe='')}")
                if request.headers.get("hx-request"):
                    response.headers["HX-Redirect"] = response.headers["location"]
                return response
            except ConsoleError as err:
                return render(request, "error.html", err.status, message=err.message)
            except AppError as err:
                return render(
                    request,
                    "error.html",
                    err.status_code,
                    message=err.message,
                    details=err.details,
                )

        return handle


async def _login(request: Request) -> Login:
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired
    async with SESSIONS.of(request.app)() as session, session.begin():
        login = await sessions.load(session, token)
    if login is None:
        raise LoginRequired
    request.state.login = login
    return login


async def _user(request: Request) -> Principal:
    return (await _login(request)).principal


async def _admin(request: Request) -> Principal:
    principal = await _user(request)
    if not principal.is_admin:
        raise ConsoleError(403, "this page is for admins")
    return principal


async def _actor(request: Request) -> Actor:
    return Actor((await _admin(request)).name, "console", client_address(request))


ConsoleUser = Annotated[Principal, Depends(_user)]
ConsoleAdmin = Annotated[Principal, Depends(_admin)]
ConsoleActor = Annotated[Actor, Depends(_actor)]
"""An admin changing the configuration from a page: what the audit log records of it."""


@dataclass(frozen=True, slots=True)
class Form:
    """A posted form whose CSRF token matched the session's."""

    data: FormData

    def text(self, key: str) -> str:
        value = self.data.get(key)
        return value.strip() if isinstance(value, str) else ""


async def _form(request: Request) -> AsyncIterator[Form]:
    login = await _login(request)
    async with request.form(max_part_size=MAX_PART) as data:
        given = data.get("csrf")
        if not isinstance(given, str) or not hmac.compare_digest(given, login.csrf):
            raise ConsoleError(403, "the form's CSRF token is missing or stale: reload the page")
        yield Form(data)


MAX_PART = 256 * 1024
"""A form field or uploaded file, at most (a PEM bundle is the largest)."""

CheckedForm = Annotated[Form, Depends(_form, scope="function")]
"""Every console POST takes this: the session's user and a form whose CSRF token matched."""


def is_tls(request: Request, trust_forwarded: bool) -> bool:
    if request.url.scheme == "https":
        return True
    return trust_forwarded and request.headers.get("x-forwarded-proto", "").lower() == "https"


def problems(err: AppError | ValidationError) -> tuple[str, dict[str, str]]:
    """An error as the form shows it: a summary, and a message per field path."""
    if isinstance(err, ValidationError):
        details = validation_details(err.errors(), PROFILE_TYPES)
        summary = "Please correct the fields marked below."
    else:
        details, summary = err.details, err.message
    fields: dict[str, str] = {}
    for detail in details:
        path = str(detail.get("field", ""))
        if path.rsplit(".", 1)[-1] in SECURITY_FLAGS:
            path = "settings.security"
        fields.setdefault(path, str(detail.get("message", "invalid")))
    return summary, fields


SECURITY_FLAGS = ("secure", "ignoreTLS", "requireTLS")
"""SMTP's flags behind the console's one security choice: their errors show on that choice."""


def status_of(err: AppError | ValidationError) -> int:
    return err.status_code if isinstance(err, AppError) else 422
