"""Recorded events feed the suppression list: hard bounces and complaints everywhere, an
unsubscribe for its profile, soft bounces past the limit within the window; in the transaction
that records them."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from app.db import transaction, utcnow
from app.delivery.vocabulary import DeliveryEvent
from app.events.service import record_events
from app.suppressions import service as suppressions
from app.wiring import Core

pytestmark = pytest.mark.anyio


async def record(runtime: Core, *events: DeliveryEvent) -> list[DeliveryEvent]:
    async with transaction(runtime.sessions) as session:
        return await record_events(session, list(events))


async def entries(admin: httpx.AsyncClient) -> list[tuple[str, str | None, str, str]]:
    items = (await admin.get("/api/v1/suppressions")).json()["items"]
    return sorted((e["address"], e["profile"], e["reason"], e["source"]) for e in items)


def bounce(email: str, kind: str, event_id: str, **fields: object) -> DeliveryEvent:
    return DeliveryEvent(
        message_pk=None,
        type="bounced",
        email=email,
        bounce_type=kind,  # type: ignore[arg-type]
        source="ses",
        profile="relay",
        provider_event_id=event_id,
        **fields,  # type: ignore[arg-type]
    )


async def test_hard_bounces_complaints_and_unsubscribes(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    await record(
        runtime,
        bounce("Gone@Example.com", "hard", "b-1"),
        DeliveryEvent(
            None,
            "complained",
            email="angry@example.com",
            source="sendgrid",
            provider_event_id="c-1",
            profile="relay",
        ),
        DeliveryEvent(
            None,
            "unsubscribed",
            email="bored@example.com",
            source="mailgun",
            provider_event_id="u-1",
            profile="relay",
        ),
        DeliveryEvent(
            None, "delivered", email="happy@example.com", source="ses", provider_event_id="d-1"
        ),
        bounce("maybe@example.com", "undetermined", "b-2"),
        DeliveryEvent(None, "bounced", email=None, source="dsn", bounce_type="hard"),
    )
    assert await entries(admin) == [
        ("angry@example.com", None, "complaint", "sendgrid"),
        ("bored@example.com", "relay", "unsubscribe", "mailgun"),
        ("gone@example.com", None, "hard_bounce", "ses"),
    ]
    [gone] = [
        e for e in (await admin.get("/api/v1/suppressions")).json()["items"]
        if e["address"] == "gone@example.com"
    ]  # fmt: skip
    assert gone["eventId"] == "b-1"

    again = await record(runtime, bounce("gone@example.com", "hard", "b-3"))
    assert len(again) == 1, "a new event is stored; the entry stays one"
    assert len(await entries(admin)) == 3


async def test_a_failed_transaction_adds_nothing(admin: httpx.AsyncClient, runtime: Core) -> None:
    class Boom(Exception):
        pass

    async def record_then_fail() -> None:
        async with transaction(runtime.sessions) as session:
            await record_events(session, [bounce("gone@example.com", "hard", "b-1")])
            raise Boom

    with pytest.raises(Boom):
        await record_then_fail()
    assert await entries(admin) == []


async def test_soft_bounces_past_the_limit_within_the_window(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    assert runtime.settings.soft_bounce_limit == 3
    old = utcnow() - timedelta(days=runtime.settings.soft_bounce_days + 1)
    await record(
        runtime,
        bounce("full@example.com", "soft", "s-old-1", occurred_at=old),
        bounce("full@example.com", "soft", "s-old-2", occurred_at=old),
        bounce("full@example.com", "soft", "s-1"),
    )
    await record(runtime, bounce("FULL@example.com", "soft", "s-2"))
    await record(runtime, bounce("full@example.com", "soft", "s-2"))  # a retried webhook
    assert await entries(admin) == [], "two within the window (old ones and repeats don't count)"
    await record(runtime, bounce("full@example.com", "soft", "s-3"))
    assert await entries(admin) == [("full@example.com", None, "hard_bounce", "ses")]


async def test_soft_bounces_never_suppress_with_limit_0(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    suppressions.configure(
        runtime.sessions, runtime.settings.model_copy(update={"soft_bounce_limit": 0})
    )
    await record(runtime, *(bounce("full@example.com", "soft", f"s-{n}") for n in range(5)))
    assert await entries(admin) == []
