"""A table used as a queue: claim due rows under a lease, fence the finish, release lost leases.

Written once for any such table (a `Queue`: its id, status, attempts, next_attempt_at and
lease_until columns; statuses `queued` and `sending`): the messages (app/delivery/outbox.py), and
the outgoing webhook deliveries (app/webhooks/). It imports no domain, so the webhook models can
use it while the outbox's finish records events that enqueue webhooks.

Claim is one short transaction that marks rows `sending`, bumps `attempts` and sets the lease
(PostgreSQL: FOR UPDATE SKIP LOCKED, so workers never claim the same row; SQLite: the transaction
is BEGIN IMMEDIATE). No transaction stays open while a transport talks to a server. Finishing
updates the row only where `attempts` still has the claimed number and `status` is `sending`: a
worker whose lease expired, and whose row another worker has claimed since, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.db import Base, among, utcnow

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


@dataclass(frozen=True, slots=True)
class Lease(Generic[K]):
    """A claimed row: its id and the attempt number its finish is fenced on."""

    id: K
    attempt: int


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


async def release_expired(session: AsyncSession, queue: Queue, now: datetime) -> int:
    """Put the queue's rows whose lease expired back in the queue, due now; returns how many."""
    result = await session.execute(
        update(queue.table)
        .where(queue.status == "sending", queue.lease_until < now)
        .values(status="queued", lease_until=None, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
