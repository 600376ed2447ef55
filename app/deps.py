"""What every endpoint may depend on, as Annotated aliases: the session, the settings, the caller;
and `Part`, the typed slot through which each package declares the running service's parts it
needs (its own `deps` module: the lifespan sets them, its routers read them). No bag of
everything: a router sees the parts its package declared, and nothing else.

Each dependency is one node reading the request (no chains of them): FastAPI's cost per request
grows with every node of the dependency tree, and POST /messages is the hot path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Generic, Protocol, TypeVar

from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.identity import Actor, Principal, require_role

T = TypeVar("T")


class Part(Generic[T]):
    """One typed part of the running service, kept in `app.state` under `name`."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def set(self, app: FastAPI, value: T) -> None:
        setattr(app.state, self.name, value)

    def of(self, app: FastAPI) -> T:
        value: T = getattr(app.state, self.name)
        return value

    def dependency(self) -> Callable[[Request], Awaitable[T]]:
        """The endpoint dependency reading it: one node, no chain."""

        async def read(request: Request) -> T:
            return self.of(request.app)

        return read


class Authenticating(Protocol):
    """What the endpoints need of the authenticator (app.security.Authenticator)."""

    async def authenticate(self, header: str | None, client: str) -> Principal: ...

    async def verify(
        self, name: str, password: str, client: str, *, accept_tokens: bool = True
    ) -> Principal: ...

    def changed(self, name: str) -> None: ...


SETTINGS: Part[Settings] = Part("settings")
SESSIONS: Part[async_sessionmaker[AsyncSession]] = Part("sessions")
AUTH: Part[Authenticating] = Part("auth")

SettingsDep = Annotated[Settings, Depends(SETTINGS.dependency())]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(SESSIONS.dependency())]
"""For an endpoint that opens its own sessions (no session held across its network I/O)."""
AuthDep = Annotated[Authenticating, Depends(AUTH.dependency())]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session: committed once when the endpoint returns, before the response is
    sent; rolled back when it raises."""
    async with SESSIONS.of(request.app)() as session, session.begin():
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _caller(request: Request) -> Principal:
    header = request.headers.get("authorization")
    return await AUTH.of(request.app).authenticate(header, client_address(request))


async def admin_user(request: Request) -> Principal:
    return require_role(await _caller(request), "admin")


async def sender_user(request: Request) -> Principal:
    return require_role(await _caller(request), "admin", "sender")


def actor_of(principal: Principal, request: Request) -> Actor:
    """The caller as the audit log records it: by HTTP Basic, or by an API token (Bearer)."""
    bearer = request.headers.get("authorization", "")[:7].lower() == "bearer "
    return Actor(principal.name, "token" if bearer else "basic", client_address(request))


async def admin_actor(request: Request) -> Actor:
    return actor_of(await admin_user(request), request)


AdminUser = Annotated[Principal, Depends(admin_user)]
AdminActor = Annotated[Actor, Depends(admin_actor)]
"""An admin about to change the configuration: what the audit log records of it."""
SenderUser = Annotated[Principal, Depends(sender_user)]
