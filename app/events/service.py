"""Recording and reading delivery events. Other packages hand in `DeliveryEvent` objects; the rows
go in with one statement per call, and a reporter's retried event (same source and event id) is
stored once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from sqlalchemy import Insert, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import among, insert_ignoring, utcnow
from app.delivery.vocabulary import DeliveryEvent
from app.events.models import EVENTS, EventRow
from app.suppressions import service as suppressions
from app.suppressions.service import Listed, suppress_from_events
from app.webhooks.enqueue import enqueue_events


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


class _Ledger:
    """Delivery's Ledger (app.delivery.events): its events recorded as every event is, and the
    suppression list read, without delivery importing either."""

    async def record(
        self, session: AsyncSession, events: Sequence[DeliveryEvent]
    ) -> list[DeliveryEvent]:
        return await record_events(session, events)

    async def listed(self, session: AsyncSession, emails: Iterable[str]) -> Listed:
        return await suppressions.listed(session, emails)


LEDGER = _Ledger()
"""What whoever starts a dispatcher hands it."""


def _insert_new(session: AsyncSession) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect."""
    return insert_ignoring(session, EVENTS)


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
