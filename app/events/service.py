"""Recording and reading delivery events. Other packages hand in `DeliveryEvent` objects; the rows
go in with one statement per call, and a reporter's retried event (same source and event id) is
stored once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import among, insert_ignoring, utcnow
from app.events.models import (
    BOUNCE_TYPES,
    DIAGNOSTIC_LENGTH,
    EVENT_ID_LENGTH,
    EVENT_TYPES,
    EVENTS,
    OWN_SOURCE,
    REASON_LENGTH,
    BounceType,
    EventRow,
    EventType,
)
from app.suppressions.service import suppress_from_events
from app.webhooks.enqueue import enqueue_events

_TYPES = frozenset(EVENT_TYPES)
_BOUNCES = frozenset(BOUNCE_TYPES)


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One event as a producer reports it. `occurred_at` defaults to when it was made; `reason` and
    `diagnostic_code` are cut to their column's length when stored."""

    message_pk: str | None
    type: EventType
    recipient_pk: int | None = None
    email: str | None = None
    occurred_at: datetime = field(default_factory=utcnow)
    source: str = OWN_SOURCE
    profile: str | None = None
    bounce_type: BounceType | None = None
    provider_event_id: str | None = None
    reason: str | None = None
    diagnostic_code: str | None = None

    def __post_init__(self) -> None:
        # The Literal types hold for checked code; a provider parser's mistake must fail here,
        # where it is made, not as a CHECK violation that rolls back a whole batch.
        if self.type not in _TYPES:
            raise ValueError(f"{self.type!r} is not an event type")
        if self.bounce_type is not None and self.bounce_type not in _BOUNCES:
            raise ValueError(f"{self.bounce_type!r} is not a bounce type")
        if self.provider_event_id is not None and len(self.provider_event_id) > EVENT_ID_LENGTH:
            raise ValueError(f"a provider event id is at most {EVENT_ID_LENGTH} characters")

    @property
    def key(self) -> tuple[str, str] | None:
        """What makes a reporter's event unique, when it has an id of its own."""
        return None if self.provider_event_id is None else (self.source, self.provider_event_id)

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            "message_pk": self.message_pk,
            "recipient_pk": self.recipient_pk,
            "email": self.email,
            "type": self.type,
            "bounce_type": self.bounce_type,
            "occurred_at": self.occurred_at,
            "recorded_at": now,
            "source": self.source,
            "profile": self.profile,
            "provider_event_id": self.provider_event_id,
            "reason": None if self.reason is None else self.reason[:REASON_LENGTH],
            "diagnostic_code": (
                None if self.diagnostic_code is None else self.diagnostic_code[:DIAGNOSTIC_LENGTH]
            ),
        }


async def record_events(
    session: AsyncSession, events: Sequence[DeliveryEvent]
) -> list[DeliveryEvent]:
    """Store `events` in the session's transaction, with what they say about the suppression list
    and their webhook deliveries; returns those stored, in order: an event whose
    (source, provider_event_id) is already stored, or repeated in `events`, is left out.

    Events without a provider id (Postroom's own) cannot repeat: one plain executemany. The others
    go in with ON CONFLICT DO NOTHING (SQLite and PostgreSQL alike), returning the keys stored."""
    now = utcnow()
    own = [event for event in events if event.key is None]
    keyed: dict[tuple[str, str], DeliveryEvent] = {}
    for event in events:
        if event.key is not None:
            keyed.setdefault(event.key, event)
    if own:
        await session.execute(insert(EVENTS), [event.row(now) for event in own])
    stored: set[tuple[str, str]] = set()
    if keyed:
        statement = _insert_new(session).returning(EVENTS.c.source, EVENTS.c.provider_event_id)
        result = await session.execute(statement, [event.row(now) for event in keyed.values()])
        stored = {(source, event_id) for source, event_id in result}
    recorded = [
        event
        for event in events
        if event.key is None or (event.key in stored and keyed[event.key] is event)
    ]
    await suppress_from_events(session, recorded)
    await enqueue_events(session, recorded)
    return recorded


def _insert_new(session: AsyncSession) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect."""
    return insert_ignoring(session, EVENTS)


def tally(events: Iterable[DeliveryEvent]) -> Counter[tuple[str, str]]:
    """How many events of each (type, profile): what the metrics count once they are committed."""
    return Counter((event.type, event.profile or "") for event in events)


async def events_of(session: AsyncSession, message_pks: Collection[str]) -> list[EventRow]:
    """The events of these messages, in the order they happened (then the order recorded)."""
    if not message_pks:
        return []
    query = (
        select(EventRow)
        .where(among(session, EventRow.message_pk, message_pks))
        .order_by(EventRow.occurred_at, EventRow.id)
    )
    return list(await session.scalars(query))


async def counts_by_profile(
    session: AsyncSession, since: datetime, types: Collection[str]
) -> dict[str, Counter[str]]:
    """Events of these types since a time, per profile and type (the console's 24 h chart)."""
    rows = await session.execute(
        select(EventRow.profile, EventRow.type, func.count())
        .where(EventRow.occurred_at >= since, EventRow.type.in_(list(types)))
        .group_by(EventRow.profile, EventRow.type)
    )
    counts: dict[str, Counter[str]] = {}
    for profile, type_, count in rows:
        counts.setdefault(profile or "(built-in)", Counter())[type_] = count
    return counts
