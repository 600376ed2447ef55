"""Queueing deliveries in record_events' transaction: one per (stored event, enabled endpoint that
takes its type), in order; nothing when none does; a change on another replica holds within
enqueue.FRESH_FOR."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from sqlalchemy import insert, select

from app.db import new_id, transaction, utcnow
from app.delivery.vocabulary import DeliveryEvent
from app.events.service import record_events
from app.webhooks import enqueue
from app.webhooks.models import ENDPOINTS, SUBSCRIPTIONS, WebhookDelivery
from app.wiring import Core
from tests.webhooks.conftest import Receiver, add_endpoint

pytestmark = pytest.mark.anyio


def bounce(n: int, source: str = "dsn") -> DeliveryEvent:
    return DeliveryEvent(
        message_pk=None,
        type="bounced",
        email=f"r{n}@example.com",
        source=source,
        bounce_type="hard",
        provider_event_id=f"report-{n}",
        diagnostic_code="550",
    )


async def deliveries(runtime: Core) -> list[WebhookDelivery]:
    async with runtime.sessions() as session:
        return list(await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


async def record(runtime: Core, events: list[DeliveryEvent]) -> list[DeliveryEvent]:
    async with transaction(runtime.sessions) as session:
        return await record_events(session, events)


async def test_one_delivery_per_stored_event_and_subscribed_endpoint_in_order(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    one = await add_endpoint(admin, receiver, eventTypes=["bounced"])
    two = await add_endpoint(admin, receiver, eventTypes=["bounced", "complained"])
    await add_endpoint(admin, receiver, eventTypes=["bounced"], enabled=False)
    await add_endpoint(admin, receiver, eventTypes=["opened"])
    stored = await record(runtime, [bounce(1), bounce(2), bounce(1)])
    assert len(stored) == 2
    again = await record(runtime, [bounce(2), bounce(3)])  # a reporter's retry is stored once
    assert [e.provider_event_id for e in again] == ["report-3"]

    rows = await deliveries(runtime)
    assert len(rows) == 6
    for endpoint in (one, two):
        mine = [json.loads(r.body) for r in rows if r.endpoint_id == endpoint["id"]]
        assert [b["data"]["recipient"] for b in mine] == [
            "r1@example.com",
            "r2@example.com",
            "r3@example.com",
        ]
        assert {b["type"] for b in mine} == {"message.bounced"}
        assert mine[0]["data"]["bounceType"] == "hard"
        assert mine[0]["data"]["providerEventId"] == "report-1"
    assert {r.status for r in rows} == {"queued"}
    assert {r.event_type for r in rows} == {"message.bounced"}
    assert len({r.webhook_id for r in rows}) == 6
    assert all(r.webhook_id.startswith("msg_") and len(r.webhook_id) == 36 for r in rows)


async def test_a_change_made_on_another_replica_holds_within_a_second(
    runtime: Core,
) -> None:
    primed = time.monotonic()
    assert await record(runtime, [bounce(1)])  # this process now knows: no endpoint
    endpoint_id = new_id()
    async with transaction(runtime.sessions) as session:  # another replica adds one
        await session.execute(
            insert(ENDPOINTS).values(
                id=endpoint_id,
                url="http://127.0.0.1:9/",
                description="",
                enabled=True,
                secret="x",
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        await session.execute(
            insert(SUBSCRIPTIONS).values(endpoint_id=endpoint_id, event_type="bounced")
        )
    await record(runtime, [bounce(2)])
    if time.monotonic() - primed < enqueue.FRESH_FOR:
        assert await deliveries(runtime) == [], "the knowledge is reused for FRESH_FOR"
    await asyncio.sleep(enqueue.FRESH_FOR)
    await record(runtime, [bounce(3)])
    rows = await deliveries(runtime)
    assert json.loads(rows[-1].body)["data"]["recipient"] == "r3@example.com"
