"""Postroom's own events (queued, then each attempt's outcome) through a real SMTP server, as
GET /api/v1/messages/{id} shows them, as records search filters on them, and as the metrics
count them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from app.delivery.dispatcher import Dispatcher
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, make_due, record, send
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


def events(saved: dict[str, Any], email: str) -> list[dict[str, Any]]:
    [recipient] = [r for r in saved["recipients"] if r["email"] == email]
    found: list[dict[str, Any]] = recipient["events"]
    return found


async def search(client: httpx.AsyncClient, **query: str) -> httpx.Response:
    return await client.get("/api/v1/messages", params=query)


def counted(runtime: Core, type_: str, profile: str = "relay") -> float:
    return runtime.metrics.value("postroom_delivery_events_total", type=type_, profile=profile)


async def test_a_life_queued_deferred_sent_in_order(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try again later"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    saved = await record(sender, message_id)
    [queued] = events(saved, "ann@example.com")
    assert queued == {
        "type": "queued",
        "bounceType": None,
        "occurredAt": saved["createdAt"],
        "source": "postroom",
        "reason": None,
        "diagnosticCode": None,
        "providerEventId": None,
    }

    await dispatcher.drain()
    server.replies.clear()
    await make_due(runtime)
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    life = events(saved, "ann@example.com")
    assert [e["type"] for e in life] == ["queued", "deferred", "sent"]
    deferred, sent = life[1], life[2]
    assert deferred["diagnosticCode"] == "451"
    assert "try again later" in deferred["reason"]
    assert sent["diagnosticCode"] == "250"
    assert {e["source"] for e in life} == {"postroom"}
    times = [datetime.fromisoformat(e["occurredAt"]) for e in life]
    assert times == sorted(times)
    assert len(set(times)) == 3
    assert saved["events"] == [], "no event about the message as a whole"

    assert counted(runtime, "queued") == 1
    assert counted(runtime, "deferred") == 1
    assert counted(runtime, "sent") == 1
    metrics = (await admin.get("/metrics")).text
    assert 'postroom_delivery_events_total{profile="relay",type="deferred"} 1.0' in metrics


async def test_a_rejected_recipient_among_sent_companions(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies={"r2@example.com": "550 5.1.1 no such user"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["r1@example.com", "r2@example.com", "r3@example.com"])
    other = await send(sender, to=["r4@example.com"])
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert saved["status"] == "partially_sent"
    assert [e["type"] for e in events(saved, "r1@example.com")] == ["queued", "sent"]
    assert [e["type"] for e in events(saved, "r3@example.com")] == ["queued", "sent"]
    queued, rejected = events(saved, "r2@example.com")
    assert queued["type"] == "queued"
    assert rejected["type"] == "rejected"
    assert rejected["diagnosticCode"] == "550"
    assert "no such user" in rejected["reason"]
    assert counted(runtime, "queued") == 4
    assert counted(runtime, "sent") == 3
    assert counted(runtime, "rejected") == 1

    found = await search(sender, event="rejected")
    assert [m["id"] for m in found.json()["items"]] == [message_id]
    found = await search(admin, event="sent")
    assert [m["id"] for m in found.json()["items"]] == [other, message_id]
    assert (await search(admin, event="bounced")).json()["items"] == []
    found = await search(admin, event="rejected", recipient="r4@example.com")
    assert found.json()["items"] == []


async def test_the_event_filter_refuses_a_type_outside_the_vocabulary(
    admin: httpx.AsyncClient,
) -> None:
    response = await search(admin, event="bounce")
    assert response.status_code == 422
    assert "event" in response.text


async def test_queued_events_for_a_batch_and_the_builtin_server(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    items = [
        {"from": "me@example.com", "to": ["a@example.com", "b@example.com"], "text": "t"},
        {"from": "me@example.com", "to": ["c@example.com"], "text": "t"},
        {"from": "me@example.com", "text": "no recipient"},
    ]
    response = await admin.post("/api/v1/messages/batch", json={"messages": items})
    assert response.json()["accepted"] == 2
    first = response.json()["results"][0]["id"]
    saved = await record(admin, first)
    assert [e["type"] for r in saved["recipients"] for e in r["events"]] == ["queued", "queued"]
    assert counted(runtime, "queued", profile="builtin") == 3
    found = await search(admin, event="queued")
    assert len(found.json()["items"]) == 2


async def test_a_deferral_past_the_maximum_age_is_a_failed_event(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try again later"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    settings = runtime.settings.model_copy(update={"max_message_age": 0.001})
    dispatcher = Dispatcher(
        runtime.sessions, settings, runtime.transports, runtime.metrics, runtime.ledger
    )
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert saved["status"] == "failed"
    assert [e["type"] for e in events(saved, "ann@example.com")] == ["queued", "failed"]
    failed = events(saved, "ann@example.com")[1]
    assert failed["reason"].startswith("gave up after 1 attempts")
    assert counted(runtime, "deferred") == 0
