"""The retention purge: a finished message's bodies go after POSTROOM_RETENTION_BODY_DAYS (its
record and events stay), and its whole record after POSTROOM_RETENTION_RECORD_DAYS.

Ages count from a message's `sendAt`, else from its acceptance. Only finished messages are
touched: a queued, scheduled or sending one is the outbox's, and the purge never locks it. The
work goes in small batches (POSTROOM_PURGE_BATCH rows: messages, their recipients and events),
each in a short transaction of its own; on PostgreSQL a batch's messages are taken with FOR
UPDATE SKIP LOCKED, so the purges of several workers share the work rather than wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, delete, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from app.audit import service as audit
from app.config import Settings
from app.db import Base, among, transaction, utcnow
from app.delivery.models import FINISHED, Attempt, Message, Recipient
from app.events.models import EventRow

log = logging.getLogger("postroom.retention")

BODY_KEYS = ("text", "html", "attachments", "personal")
"""The payload's content, as opposed to its routing (from, to, cc, bcc, group, headers, subject):
what the body purge removes. Recipients' template data (recipients.data) goes with it."""
HANGING: tuple[tuple[type[Base], InstrumentedAttribute[Any]], ...] = (
    (EventRow, EventRow.message_pk),
    (Attempt, Attempt.message_pk),
    (Recipient, Recipient.message_pk),
)
"""What hangs on a message, deleted before it (events first: they name recipients)."""
STEP_SECONDS = 10.0
"""The longest one pass works before it lets the loop beat (a heartbeat is stale after 30 s);
a backlog goes on at the next pass."""

Purger = Callable[[AsyncSession, datetime, int], Awaitable[int]]
"""Another log's purge: `purge(session, before, limit)` deletes at most `limit` of its entries
older than `before` in the session's transaction and returns how many it deleted."""

OTHER_LOGS: tuple[Purger, ...] = (audit.purge,)
"""The other logs purged with the records' cutoff, each in batches of its own: the audit log."""


@dataclass(slots=True)
class Purged:
    """What one pass removed."""

    bodies: int = 0
    records: int = 0
    other: int = 0

    def __bool__(self) -> bool:
        return bool(self.bodies or self.records or self.other)


@dataclass(slots=True)
class Purge:
    """One pass at a time (`step`), run by a supervised loop (app/retention/running.py)."""

    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    others: Sequence[Purger] = field(default=OTHER_LOGS)

    async def step(self) -> Purged:
        """Purge what is due, batch by batch, for at most STEP_SECONDS."""
        now = utcnow()
        deadline = time.monotonic() + STEP_SECONDS
        records = now - timedelta(days=self.settings.retention_record_days)
        bodies = now - timedelta(days=self.settings.retention_body_days)
        done = Purged()
        done.records = await self._repeat(partial(self._records, records), deadline)
        done.bodies = await self._repeat(partial(self._bodies, bodies, records, now), deadline)
        for other in self.others:
            done.other += await self._repeat(partial(self._other, other, records), deadline)
        if done:
            log.info(
                "retention purge: %d records, the bodies of %d messages, %d other entries",
                done.records,
                done.bodies,
                done.other,
            )
        return done

    async def _repeat(self, batch: Callable[[], Awaitable[int]], deadline: float) -> int:
        total = 0
        while time.monotonic() < deadline:
            count = await batch()
            total += count
            if not count:
                break
            await asyncio.sleep(0)  # the dispatcher's transactions go between two batches
        return total

    async def _records(self, before: datetime) -> int:
        """Delete one batch of records older than `before`, with everything that hangs on them."""
        async with transaction(self.sessions) as session:
            ids = await self._batch(session, _older(before))
            if ids:
                for table, column in HANGING:
                    await session.execute(
                        delete(table)
                        .where(among(session, column, ids))
                        .execution_options(synchronize_session=False)
                    )
                await session.execute(
                    delete(Message)
                    .where(among(session, Message.id, ids))
                    .execution_options(synchronize_session=False)
                )
        return len(ids)

    async def _bodies(self, before: datetime, records: datetime, now: datetime) -> int:
        """Remove the bodies of one batch of messages older than `before`, and younger than
        `records`: an older one's whole record goes (a purge in another worker may be at it)."""
        kept = or_(Message.created_at >= records, Message.send_at >= records)
        async with transaction(self.sessions) as session:
            where = [Message.body_purged_at.is_(None), *_older(before), kept]
            ids = await self._batch(session, where)
            if ids:
                await session.execute(
                    update(Message)
                    .where(among(session, Message.id, ids))
                    .values(payload=_without_body(session), body_purged_at=now)
                    .execution_options(synchronize_session=False)
                )
                await session.execute(
                    update(Recipient)
                    .where(among(session, Recipient.message_pk, ids), Recipient.data.is_not(None))
                    .values(data=None)
                    .execution_options(synchronize_session=False)
                )
        return len(ids)

    async def _other(self, purge: Purger, before: datetime) -> int:
        async with transaction(self.sessions) as session:
            return await purge(session, before, self.settings.purge_batch)

    async def _batch(self, session: AsyncSession, where: list[ColumnElement[bool]]) -> list[str]:
        """The oldest messages meeting `where` whose rows (the message, its recipients and its
        events) fit in POSTROOM_PURGE_BATCH; always at least one, however large."""
        budget = self.settings.purge_batch
        size = (
            select(func.count()).where(Recipient.message_pk == Message.id).scalar_subquery()
            + select(func.count()).where(EventRow.message_pk == Message.id).scalar_subquery()
        )
        rows = await session.execute(
            select(Message.id, size)
            .where(*where)
            .order_by(Message.created_at)
            .limit(budget)
            .with_for_update(of=Message, skip_locked=True)
        )
        ids: list[str] = []
        used = 0
        for message_pk, rows_of in rows:
            used += 1 + rows_of
            if ids and used > budget:
                break
            ids.append(message_pk)
        return ids


def _older(before: datetime) -> list[ColumnElement[bool]]:
    """Finished messages whose age (from their sendAt, else their acceptance) passed `before`.
    On created_at first: that is what the indexes order."""
    return [
        Message.created_at < before,
        or_(Message.send_at.is_(None), Message.send_at < before),
        Message.status.in_(FINISHED),
    ]


def _without_body(session: AsyncSession) -> ColumnElement[object]:
    """The payload without BODY_KEYS, computed by the database (the bodies are never read)."""
    if session.get_bind().dialect.name == "postgresql":
        keys = ",".join(BODY_KEYS)
        return literal_column(f"(payload::jsonb - '{{{keys}}}'::text[])::json")
    return func.json_remove(Message.payload, *(f"$.{key}" for key in BODY_KEYS))
