"""Scheduled mail (sendAt), cancel and retry, through the API, a real SMTP server and the
in-process dispatcher (the several-worker race is tests/reliability/test_lifecycle_workers.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from app.db import transaction, utcnow
from app.delivery import outbox
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.webhooks.models import WebhookDelivery
from app.wiring import Core
from tests.delivery import conftest as delivery
from tests.delivery.conftest import add_smtp_profile, make_due, record
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


def ahead(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def count(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


async def send(client: httpx.AsyncClient, **body: Any) -> str:
    body.setdefault("from", "app@example.com")
    return await delivery.send(client, **body)


async def post(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("from", "app@example.com")
    body.setdefault("text", "Hello")
    body.setdefault("subject", "Hello")
    return await client.post("/api/v1/messages", json=body)


async def backdate(runtime: Core, message_id: str, **values: Any) -> None:
    async with transaction(runtime.sessions) as session:
        await session.execute(update(Message).where(Message.id == message_id).values(**values))


async def test_a_scheduled_message_waits_for_its_time(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    at = datetime.now(UTC) + timedelta(seconds=2)
    response = await post(sender, to=["ann@example.com"], sendAt=at.isoformat())
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "scheduled"
    message_id = response.json()["id"]
    saved = await record(sender, message_id)
    assert saved["status"] == "scheduled"
    assert datetime.fromisoformat(saved["sendAt"]) == at
    assert datetime.fromisoformat(saved["nextAttemptAt"]) == at
    scheduled = await sender.get("/api/v1/messages", params={"status": "scheduled"})
    assert [m["id"] for m in scheduled.json()["items"]] == [message_id]
    assert (await sender.get("/api/v1/messages", params={"status": "queued"})).json()["items"] == []

    await dispatcher.drain()
    assert server.transactions == []
    await asyncio.sleep((at - datetime.now(UTC)).total_seconds() + 0.05)
    assert (await record(sender, message_id))["status"] == "queued"  # due: waits for a worker
    await dispatcher.drain()
    assert len(server.transactions) == 1
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert datetime.fromisoformat(saved["attemptLog"][0]["startedAt"]) >= at


@pytest.mark.parametrize(
    ("send_at", "expected"),
    [
        (lambda: ahead(seconds=-5), "must not be in the past"),
        (lambda: ahead(days=30, minutes=1), "at most 30 days ahead"),
        (lambda: "tomorrow", "datetime"),
    ],
)
async def test_a_send_at_out_of_range_is_a_422_naming_it_and_stores_nothing(
    sender: httpx.AsyncClient, runtime: Core, send_at: Any, expected: str
) -> None:
    response = await post(sender, to=["ann@example.com"], sendAt=send_at())
    assert response.status_code == 422, response.text
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "sendAt"
    assert expected in detail["message"]
    assert await count(runtime) == 0


async def test_a_send_at_without_an_offset_is_utc_and_30_days_is_allowed(
    sender: httpx.AsyncClient,
) -> None:
    naive = (datetime.now(UTC) + timedelta(hours=2)).replace(tzinfo=None, microsecond=0)
    response = await post(sender, to=["ann@example.com"], sendAt=naive.isoformat())
    assert response.status_code == 202, response.text
    saved = await record(sender, response.json()["id"])
    assert datetime.fromisoformat(saved["sendAt"]) == naive.replace(tzinfo=UTC)
    limit = await post(sender, to=["ann@example.com"], sendAt=ahead(days=30, seconds=-30))
    assert limit.status_code == 202, limit.text


async def test_a_batch_item_with_a_bad_send_at_fails_alone(sender: httpx.AsyncClient) -> None:
    good = {"from": "app@example.com", "to": ["a@example.com"], "text": "t"}
    bad = good | {"to": ["b@example.com"], "sendAt": ahead(days=-1)}
    good["sendAt"] = ahead(hours=1)
    response = await sender.post("/api/v1/messages/batch", json={"messages": [good, bad]})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["status"] == 202
    assert second["status"] == 422
    assert second["error"]["details"][0]["field"] == "sendAt"
    assert (await record(sender, first["id"]))["status"] == "scheduled"


async def test_an_idempotent_replay_of_a_scheduled_message_says_scheduled(
    sender: httpx.AsyncClient,
) -> None:
    body = {
        "from": "app@example.com",
        "to": ["a@example.com"],
        "text": "t",
        "sendAt": ahead(hours=1),
    }
    headers = {"Idempotency-Key": "sched-1"}
    first = await sender.post("/api/v1/messages", json=body, headers=headers)
    again = await sender.post("/api/v1/messages", json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "scheduled"


async def test_a_message_s_age_counts_from_its_send_at(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    """Posted two days ago for now: its first attempt is deferred and retried, not failed for
    POSTROOM_MAX_MESSAGE_AGE (24 h) as a message posted then for then would be."""
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try later"})
    await add_smtp_profile(admin, server)
    message_id = (await post(sender, to=["ann@example.com"], sendAt=ahead(hours=1))).json()["id"]
    now = utcnow()
    await backdate(
        runtime, message_id, created_at=now - timedelta(days=2), send_at=now, next_attempt_at=now
    )
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "queued", saved["lastError"]
    assert saved["recipients"][0]["status"] == "deferred"

    # a worker that died mid-attempt: the sweep requeues it rather than giving up
    await backdate(runtime, message_id, status="sending", lease_until=now - timedelta(seconds=1))
    async with transaction(runtime.sessions) as session:
        swept = await outbox.sweep(session, max_age=runtime.settings.max_message_age)
    assert swept == 1
    assert (await record(sender, message_id))["status"] == "queued"


async def test_cancel_a_scheduled_message_it_is_never_sent(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    hook = await admin.post(
        "/api/v1/webhooks",
        json={"url": "https://hooks.example.com/in", "eventTypes": ["cancelled"]},
    )
    assert hook.status_code == 201, hook.text
    message_id = await send(
        sender, to=["ann@example.com", "bob@example.com"], sendAt=ahead(hours=1)
    )

    response = await sender.post(f"/api/v1/messages/{message_id}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["lastError"] == "cancelled by sender"
    for recipient in cancelled["recipients"]:
        assert recipient["status"] == "cancelled"
        assert [e["type"] for e in recipient["events"]] == ["queued", "cancelled"]
    assert runtime.metrics.value("postroom_messages_total", status="cancelled") == 1

    await backdate(runtime, message_id, next_attempt_at=utcnow() - timedelta(minutes=1))
    await dispatcher.drain()
    assert server.transactions == []
    assert (await record(sender, message_id))["status"] == "cancelled"
    async with runtime.sessions() as session:
        types = list(await session.scalars(select(WebhookDelivery.event_type)))
    assert types == ["message.cancelled", "message.cancelled"]
    found = await sender.get("/api/v1/messages", params={"event": "cancelled"})
    assert [m["id"] for m in found.json()["items"]] == [message_id]
    again = await sender.post(f"/api/v1/messages/{message_id}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"


async def test_cancel_a_deferred_message(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try later"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    await dispatcher.drain()
    assert (await record(sender, message_id))["recipients"][0]["status"] == "deferred"
    response = await admin.post(f"/api/v1/messages/{message_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["recipients"][0]["status"] == "cancelled"
    server.replies.clear()
    await make_due(runtime)
    await dispatcher.drain()
    assert server.transactions == []


async def test_cancel_refuses_a_finished_message_and_says_why(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies={"bad@example.com": "550 5.1.1 no such user"})
    await add_smtp_profile(admin, server)
    sent = await send(sender, to=["ann@example.com"])
    failed = await send(sender, to=["bad@example.com"])
    await dispatcher.drain()
    response = await sender.post(f"/api/v1/messages/{sent}/cancel")
    assert response.status_code == 409
    error = response.json()["error"]
    assert "was sent at" in error["message"]
    assert error["details"] == [{"field": "status", "message": "sent"}]
    response = await sender.post(f"/api/v1/messages/{failed}/cancel")
    assert response.status_code == 409
    assert "it failed" in response.json()["error"]["message"]
    assert (await record(sender, sent))["status"] == "sent"


async def test_cancel_of_a_message_being_sent_lets_it_finish(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(delays={"DATA": 1.0})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    draining = asyncio.create_task(dispatcher.drain())
    for _ in range(200):
        if (await record(sender, message_id))["status"] == "sending":
            break
        await asyncio.sleep(0.01)
    response = await sender.post(f"/api/v1/messages/{message_id}/cancel")
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "is being sent (attempt 1)" in error["message"]
    assert "the attempt finishes" in error["message"]
    assert error["details"] == [{"field": "status", "message": "sending"}]
    await draining
    assert (await record(sender, message_id))["status"] == "sent"
    assert len(server.transactions) == 1


async def test_only_the_owner_or_an_admin_may_cancel(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    theirs = await send(admin, to=["ann@example.com"], sendAt=ahead(hours=1))
    for action in ("cancel", "retry", "resend"):
        response = await sender.post(f"/api/v1/messages/{theirs}/{action}")
        assert response.status_code == 404, action
        missing = await admin.post(f"/api/v1/messages/{'0' * 32}/{action}")
        assert missing.status_code == 404, action
    mine = await send(sender, to=["ann@example.com"], sendAt=ahead(hours=1))
    assert (await admin.post(f"/api/v1/messages/{mine}/cancel")).status_code == 200
    assert (await admin.post(f"/api/v1/messages/{theirs}/cancel")).status_code == 200


async def test_retry_tries_a_deferred_message_now(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try later"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    await dispatcher.drain()
    deferred = await record(sender, message_id)
    assert datetime.fromisoformat(deferred["nextAttemptAt"]) > datetime.now(UTC)
    server.replies.clear()
    await dispatcher.drain()
    assert server.transactions == [], "not due yet"

    response = await sender.post(f"/api/v1/messages/{message_id}/retry")
    assert response.status_code == 200, response.text
    assert datetime.fromisoformat(response.json()["nextAttemptAt"]) <= datetime.now(UTC)
    await dispatcher.drain()
    assert len(server.transactions) == 1
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert saved["attempts"] == 2
    again = await sender.post(f"/api/v1/messages/{message_id}/retry")
    assert again.status_code == 409
    assert again.json()["error"]["details"] == [{"field": "status", "message": "sent"}]


async def test_retry_refuses_a_message_that_is_not_deferred(sender: httpx.AsyncClient) -> None:
    scheduled = await send(sender, to=["ann@example.com"], sendAt=ahead(hours=1))
    response = await sender.post(f"/api/v1/messages/{scheduled}/retry")
    assert response.status_code == 409
    assert "is scheduled for" in response.json()["error"]["message"]
    assert response.json()["error"]["details"] == [{"field": "status", "message": "scheduled"}]
    queued = await send(sender, to=["ann@example.com"])
    response = await sender.post(f"/api/v1/messages/{queued}/retry")
    assert response.status_code == 409
    assert "never tried" in response.json()["error"]["message"]
    await sender.post(f"/api/v1/messages/{scheduled}/cancel")
    response = await sender.post(f"/api/v1/messages/{scheduled}/retry")
    assert response.status_code == 409
    assert response.json()["error"]["details"] == [{"field": "status", "message": "cancelled"}]
