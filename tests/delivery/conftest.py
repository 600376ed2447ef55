from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.db import transaction, utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message, QuotaBucket
from app.wiring import Core
from tests.conftest import allow_sender
from tests.smtpd import SmtpServer


@pytest.fixture
def dispatcher(runtime: Core) -> Dispatcher:
    return Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )


async def make_due(runtime: Core) -> None:
    """Skip the retry wait: every queued message is due now."""
    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(Message).where(Message.status == "queued").values(next_attempt_at=utcnow())
        )


async def end_throttles(runtime: Core) -> None:
    """Skip the wait a provider asked for: no profile is throttled any more."""
    async with transaction(runtime.sessions) as session:
        await session.execute(update(QuotaBucket).values(throttled_until=None))


async def add_smtp_profile(
    admin: httpx.AsyncClient, server: SmtpServer, name: str = "relay", **fields: Any
) -> dict[str, Any]:
    settings = {
        "host": server.host,
        "port": server.port,
        "ignoreTLS": True,
        **fields.pop("settings", {}),
    }
    body = {
        "name": name,
        "type": "smtp",
        "senderEmail": "noreply@example.com",
        "settings": settings,
        **fields,
    }
    response = await admin.post("/api/v1/servers", json=body)
    assert response.status_code == 201, response.text
    await allow_sender(admin, name)  # these tests are about delivery, not bounds
    result: dict[str, Any] = response.json()
    return result


async def send(client: httpx.AsyncClient, **body: Any) -> str:
    body.setdefault("text", "Hello")
    body.setdefault("subject", "Hello")
    response = await client.post("/api/v1/messages", json=body)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


async def record(client: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/messages/{message_id}")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result
