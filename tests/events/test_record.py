"""record_events: a reporter's event is stored once per (source, provider_event_id), on SQLite and
PostgreSQL alike; only live attempts write events."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select, update

from app.db import transaction
from app.delivery import outbox
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message, Recipient
from app.delivery.vocabulary import DeliveryEvent
from app.events.models import EventRow
from app.events.service import events_of, record_events
from app.wiring import Core
from tests.delivery.conftest import send

pytestmark = pytest.mark.anyio


async def a_message(admin: httpx.AsyncClient, runtime: Core) -> tuple[str, int]:
    message_pk = await send(admin, **{"from": "me@example.com"}, to=["ann@example.com"])
    async with transaction(runtime.sessions) as session:
        recipient_pk = await session.scalar(
            select(Recipient.id).where(Recipient.message_pk == message_pk)
        )
    assert recipient_pk is not None
    return message_pk, recipient_pk


def bounce(message_pk: str, recipient_pk: int, event_id: str, source: str = "ses") -> DeliveryEvent:
    return DeliveryEvent(
        message_pk,
        "bounced",
        recipient_pk=recipient_pk,
        email="ann@example.com",
        source=source,
        profile="ses1",
        bounce_type="hard",
        provider_event_id=event_id,
        reason="x" * 3000,
        diagnostic_code="smtp; 550 5.1.1 user unknown",
    )


async def test_a_retried_provider_event_is_stored_once(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    message_pk, recipient_pk = await a_message(admin, runtime)
    first = bounce(message_pk, recipient_pk, "evt-1")
    async with transaction(runtime.sessions) as session:
        stored = await record_events(session, [first, bounce(message_pk, recipient_pk, "evt-1")])
    assert stored == [first], "a repeat within one call is left out"

    again = bounce(message_pk, recipient_pk, "evt-1")
    other_source = bounce(message_pk, recipient_pk, "evt-1", source="sendgrid")
    second = bounce(message_pk, recipient_pk, "evt-2")
    own = DeliveryEvent(message_pk, "delivered", recipient_pk=recipient_pk)
    async with transaction(runtime.sessions) as session:
        stored = await record_events(session, [again, other_source, own, second])
    assert stored == [other_source, own, second]

    async with transaction(runtime.sessions) as session:
        rows = await events_of(session, [message_pk])
    assert [(r.type, r.source, r.provider_event_id) for r in rows] == [
        ("bounced", "ses", "evt-1"),
        ("bounced", "sendgrid", "evt-1"),
        ("bounced", "ses", "evt-2"),
        ("delivered", "postroom", None),
    ], "in the order they happened, not the order stored"
    ses = rows[0]
    assert ses.bounce_type == "hard"
    assert ses.reason == "x" * 2000, "cut to 2000"
    assert ses.diagnostic_code == "smtp; 550 5.1.1 user unknown"
    assert ses.profile == "ses1"
    assert ses.email == "ann@example.com"

    saved = (await admin.get(f"/api/v1/messages/{message_pk}")).json()
    [recipient] = saved["recipients"]
    assert [e["providerEventId"] for e in recipient["events"]] == [
        None,
        "evt-1",
        "evt-1",
        "evt-2",
        None,
    ]
    assert recipient["events"][1]["bounceType"] == "hard"


async def test_an_event_about_the_whole_message_or_no_known_message(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    message_pk, _ = await a_message(admin, runtime)
    whole = DeliveryEvent(message_pk, "failed", source="mailgun", provider_event_id="m-1")
    stray = DeliveryEvent(None, "unknown", email="who@example.com", source="mailgun")
    async with transaction(runtime.sessions) as session:
        assert await record_events(session, [whole, stray]) == [whole, stray]
    saved = (await admin.get(f"/api/v1/messages/{message_pk}")).json()
    assert [e["type"] for e in saved["events"]] == ["failed"]
    async with transaction(runtime.sessions) as session:
        unmatched = await session.scalar(
            select(func.count()).select_from(EventRow).where(EventRow.message_pk.is_(None))
        )
    assert unmatched == 1


async def test_an_attempt_that_lost_its_lease_writes_no_event(
    admin: httpx.AsyncClient, runtime: Core, dispatcher: Dispatcher
) -> None:
    message_pk, _ = await a_message(admin, runtime)
    async with transaction(runtime.sessions) as session:
        claims = await outbox.claim(session, limit=10, lease=60)
    jobs = await dispatcher._load(claims)
    for job in jobs:
        await dispatcher._attempt(job)
    async with transaction(runtime.sessions) as session:  # another worker claimed it meanwhile
        await session.execute(
            update(Message).where(Message.id == message_pk).values(attempts=Message.attempts + 1)
        )
    await dispatcher._finish(jobs)
    async with transaction(runtime.sessions) as session:
        assert [r.type for r in await events_of(session, [message_pk])] == []
    assert (
        runtime.metrics.value("postroom_delivery_events_total", type="sent", profile="builtin") == 0
    )

    async with transaction(runtime.sessions) as session:  # the live attempt's result is recorded
        await session.execute(
            update(Message).where(Message.id == message_pk).values(attempts=Message.attempts - 1)
        )
    await dispatcher._finish(jobs)
    async with transaction(runtime.sessions) as session:
        assert [r.type for r in await events_of(session, [message_pk])] == ["sent"]
    assert (
        runtime.metrics.value("postroom_delivery_events_total", type="sent", profile="builtin") == 1
    )
