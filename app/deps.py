"""What endpoints depend on, as Annotated aliases: the session, the settings, the caller.

Each is one dependency reading the request (no chains of them): FastAPI's cost per request
grows with every node of the dependency tree, and POST /messages is the hot path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

import dns.asyncresolver
import httpx
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.service import Actor
from app.config import Settings
from app.crypto import SecretBox
from app.delivery.dispatcher import Dispatcher
from app.delivery.transports import TransportCache
from app.dkim import lookup
from app.egress import EgressPolicy
from app.messages.intake import Intake
from app.metrics import Metrics
from app.retention.purge import PurgeLoop
from app.security import Authenticator, Principal, require_role
from app.servers.service import Profiles
from app.throttle import Throttle
from app.transports.base import TransportContext
from app.webhooks.sender import Sender


class Reporting(Protocol):
    """A loop that tells /readyz what keeps it from working (None: nothing)."""

    def problem(self) -> str | None: ...


@dataclass(slots=True)
class Runtime:
    """Everything the running service shares, built once by the lifespan."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    box: SecretBox
    egress: EgressPolicy
    auth: Authenticator
    http: httpx.AsyncClient
    transport_context: TransportContext
    transports: TransportCache
    metrics: Metrics
    test_sends: Throttle
    """Test sends per profile per minute, shared by every replica."""
    sends: Throttle | None
    """Per-user POST /messages limit, when configured, shared by every replica."""
    intake: Intake
    """Stores POST /messages in shared transactions (group commit)."""
    wake: Callable[[], None] = lambda: None
    """Tells the in-process dispatcher that a message was queued."""
    dispatcher: Dispatcher | None = None
    """This process's dispatcher, while it runs one (for /readyz)."""
    sender: Sender | None = None
    """This process's webhook sender, while it runs one (for /readyz)."""
    purge: PurgeLoop | None = None
    """This process's retention purge, while it runs one (beside its dispatcher; for /readyz)."""
    submission: Reporting | None = None
    """This process's SMTP submission listener, while it runs one (for /readyz)."""

    def queued(self) -> None:
        self.wake()

    @property
    def profiles(self) -> Profiles:
        return Profiles(self.box, self.egress, self.settings.public_url)

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        """For DKIM record checks: POSTROOM_DNS_SERVERS, else the system's resolvers."""
        return lookup.resolver(self.settings.resolvers)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return _runtime(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(request: Request) -> Settings:
    return _runtime(request).settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session: committed once when the endpoint returns, before the response is
    sent; rolled back when it raises."""
    async with _runtime(request).sessions() as session, session.begin():
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _caller(request: Request) -> Principal:
    header = request.headers.get("authorization")
    return await _runtime(request).auth.authenticate(header, client_address(request))


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
