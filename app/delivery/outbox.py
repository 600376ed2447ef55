"""The outbox protocol: claim due rows under a lease, finish them fenced, sweep lost leases.

Written once for any table used as a queue (a `Queue`: its id, status, attempts,
next_attempt_at and lease_until columns; statuses `queued` and `sending`): the messages, and the
outgoing webhook deliveries.

Claim is one short transaction that marks rows `sending`, bumps `attempts` and sets the lease
(PostgreSQL: FOR UPDATE SKIP LOCKED, so workers never claim the same row; SQLite: the transaction
is BEGIN IMMEDIATE). No transaction stays open while a transport talks to a server. Finishing
updates the row only where `attempts` still has the claimed number and `status` is `sending`: a
worker whose lease expired, and whose message another worker has claimed since, changes nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.db import Base, among, utcnow
from app.delivery.models import Message, Recipient

K = TypeVar("K", str, int)


@dataclass(frozen=True, slots=True)
class Queue:
    """A table used as a queue: the columns claim, fence and sweep read and write."""

    table: type[Base]
    id: InstrumentedAttribute[Any]
    status: InstrumentedAttribute[str]
    attempts: InstrumentedAttribute[int]
    next_attempt_at: InstrumentedAttribute[datetime]
    lease_until: InstrumentedAttribute[datetime | None]


MESSAGE_QUEUE = Queue(
    Message,
    Message.id,
    Message.status,
    Message.attempts,
    Message.next_attempt_at,
    Message.lease_until,
)


@dataclass(frozen=True, slots=True)
class Lease(Generic[K]):
    """A claimed row: its id and the attempt number its finish is fenced on."""

    id: K
    attempt: int


Claim = Lease[str]
"""A claimed message."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float
    cap: float
    max_age: float

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1`: base doubling per attempt, capped, with ±25 %
        jitter, and never sooner than the server asked (Retry-After)."""
        backoff = min(self.cap, self.base * 2.0 ** max(attempt - 1, 0))
        jittered = backoff * random.uniform(0.75, 1.25)
        return max(jittered, retry_after or 0.0)

    def expired(self, created_at: datetime, now: datetime) -> bool:
        return now - created_at >= timedelta(seconds=self.max_age)


async def claim(
    session: AsyncSession, *, limit: int, lease: float, now: datetime | None = None
) -> list[Claim]:
    """Claim up to `limit` due messages; call inside a transaction of its own."""
    return await claim_due(session, MESSAGE_QUEUE, limit=limit, lease=lease, now=now)


async def claim_due(
    session: AsyncSession,
    queue: Queue,
    *,
    limit: int,
    lease: float,
    now: datetime | None = None,
    where: tuple[ColumnElement[bool], ...] = (),
) -> list[Lease[Any]]:
    """Claim up to `limit` due rows of the queue (that also meet `where`), oldest due first; call
    inside a transaction of its own."""
    now = now or utcnow()
    due = (
        select(queue.id)
        .where(queue.status == "queued", queue.next_attempt_at <= now, *where)
        .order_by(queue.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(await session.scalars(due))
    if not ids:
        return []
    # By id alone: the rows are locked (or, on SQLite, the database is) since the SELECT. A
    # status condition here would let the planner pick the status index instead of the primary
    # key, and walk every queued row of a backlog for each claim.
    rows = await session.execute(
        update(queue.table)
        .where(among(session, queue.id, ids))
        .values(
            status="sending",
            attempts=queue.attempts + 1,
            lease_until=now + timedelta(seconds=lease),
        )
        .returning(queue.id, queue.attempts)
        .execution_options(synchronize_session=False)
    )
    return [Lease(row.id, row.attempts) for row in rows]


GAVE_UP = "gave up: the message outlived POSTROOM_MAX_MESSAGE_AGE with its attempt unfinished"


async def sweep(
    session: AsyncSession, now: datetime | None = None, *, max_age: float | None = None
) -> int:
    """Put messages whose lease expired back in the queue; returns how many.

    With `max_age`, such a message older than that fails instead (its pending recipients too): a
    message whose every attempt crashes the worker is not retried for ever.
    """
    now = now or utcnow()
    lost = (Message.status == "sending", Message.lease_until < now)
    if max_age is not None:
        cutoff = now - timedelta(seconds=max_age)
        old = list(
            await session.scalars(
                select(Message.id).where(
                    *lost, func.coalesce(Message.send_at, Message.created_at) < cutoff
                )
            )
        )
        if old:
            await session.execute(
                update(Message)
                .where(among(session, Message.id, old), *lost)
                .values(status="failed", lease_until=None, last_error=GAVE_UP)
                .execution_options(synchronize_session=False)
            )
            await session.execute(
                update(Recipient)
                .where(
                    among(session, Recipient.message_pk, old),
                    Recipient.status.in_(("pending", "deferred")),
                )
                .values(status="failed", response=GAVE_UP, updated_at=now)
                .execution_options(synchronize_session=False)
            )
    return await release_expired(session, MESSAGE_QUEUE, now)


async def release_expired(session: AsyncSession, queue: Queue, now: datetime) -> int:
    """Put the queue's rows whose lease expired back in the queue, due now; returns how many."""
    result = await session.execute(
        update(queue.table)
        .where(queue.status == "sending", queue.lease_until < now)
        .values(status="queued", lease_until=None, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def fenced(queue: Queue, claim: Lease[Any]) -> list[ColumnElement[bool]]:
    """The WHERE clause that fences a finishing write on the claimed attempt."""
    return [queue.id == claim.id, queue.attempts == claim.attempt, queue.status == "sending"]
