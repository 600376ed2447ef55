"""Fixtures for the provider hooks: a profile per provider with webhook keys made here, messages
really sent (dispatcher + memory transport answering with the provider's message id), and SNS's
certificate host played by an httpx transport at the `Sns` seam."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.delivery.dispatcher import Dispatcher
from app.events.hooks.deps import HOOKS
from app.events.models import EventRow
from app.events.providers.sns import Sns
from app.transports.base import OutgoingMessage
from app.transports.memory import MemoryTransport
from app.transports.result import SendResult
from app.wiring import Core
from tests.delivery.conftest import dispatcher, send
from tests.events.hooks.signing import SendgridKey, SnsKey
from tests.servers.helpers import body, create

__all__ = ["dispatcher"]

MAILGUN_KEY = "mailgun-signing-key-made-by-the-test"
MANDRILL_KEY = "mandrill-webhook-key-made-by-the-test"
MANDRILL_URL = "https://mail.example.org/api/v1/hooks/md/events?from=mandrill"


@dataclass
class Hooks:
    """The hook endpoint as a provider sees it (no Basic auth) and what the test controls."""

    client: httpx.AsyncClient
    admin: httpx.AsyncClient
    runtime: Core
    dispatcher: Dispatcher
    monkeypatch: pytest.MonkeyPatch
    sendgrid: SendgridKey = field(default_factory=SendgridKey)

    async def post(
        self, profile: str, content: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.post(
            f"/api/v1/hooks/{profile}/events", content=content, headers=headers or {}
        )

    async def profile(self, type_: str, name: str, **settings: Any) -> None:
        payload = body(type_, name)
        payload["settings"] = {**payload["settings"], **settings}
        await create(self.admin, payload)

    async def sent(self, to: list[str], provider_id: str | None) -> str:
        """A message really sent (the memory transport answering as the provider does, with its
        message id); returns its id."""

        def answer(message: OutgoingMessage) -> SendResult:
            return SendResult.all(
                list(message.recipients), "sent", code=202, provider_id=provider_id
            )

        memory = MemoryTransport("provider", answer)
        self.monkeypatch.setattr(self.runtime.transports, "get", lambda profile: memory)
        message_pk = await send(self.admin, to=to, **{"from": "reports@example.com"})
        await self.dispatcher.drain()
        assert memory.sent, "the message went through the memory transport"
        return message_pk

    async def events(self, message_pk: str | None = None) -> list[EventRow]:
        """Events from providers (not Postroom's own), of one message or of none (`unknown`)."""
        about = EventRow.message_pk
        query = select(EventRow).where(EventRow.source != "postroom").order_by(EventRow.id)
        query = query.where(about.is_(None) if message_pk is None else about == message_pk)
        async with self.runtime.sessions() as session:
            return list(await session.scalars(query))

    async def all_events(self) -> list[EventRow]:
        async with self.runtime.sessions() as session:
            query = select(EventRow).where(EventRow.source != "postroom")
            return list(await session.scalars(query))

    def counted(self, provider: str, outcome: str) -> float:
        return self.runtime.metrics.value(
            "postroom_hooks_total", provider=provider, outcome=outcome
        )


@pytest.fixture
async def hooks(
    app_runtime: tuple[Any, Core],
    admin: httpx.AsyncClient,
    dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Hooks]:
    app, runtime = app_runtime
    transport = httpx.ASGITransport(app=app, client=("198.51.100.20", 443))
    async with httpx.AsyncClient(transport=transport, base_url="http://postroom.test") as client:
        yield Hooks(client, admin, runtime, dispatcher, monkeypatch)


@dataclass
class SnsHost:
    """What SNS's hosts were asked: certificate fetches and subscription confirmations."""

    key: SnsKey
    requests: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith(".pem"):
            return httpx.Response(200, content=self.key.pem)
        if request.url.params.get("Action") == "ConfirmSubscription":
            return httpx.Response(200, text="<ConfirmSubscriptionResponse/>")
        return httpx.Response(404)

    def urls(self) -> list[str]:
        return [str(request.url) for request in self.requests]


@pytest.fixture
async def sns(app_runtime: tuple[Any, Core]) -> AsyncIterator[SnsHost]:
    """SNS's certificate host, at the seam: the hooks' `Sns` fetches through this transport."""
    host = SnsHost(SnsKey())
    async with httpx.AsyncClient(transport=httpx.MockTransport(host.handle)) as client:
        HOOKS.of(app_runtime[0]).sns = Sns(client)
        yield host
