"""Heartbeats of the delivery loops, and the shared state that /readyz and /metrics report.

Each dispatcher (in `postroom serve` or a `postroom worker`) has a row in `heartbeats` and writes
`beat_at` after every pass that worked, at most every HEARTBEAT_EVERY seconds: a loop that is
stuck or keeps failing stops beating, and every replica sees it go stale after STALE_AFTER."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction, utcnow
from app.delivery.models import Heartbeat, Message, QuotaBucket
from app.metrics import FailingProfile, LoopBeat, Metrics, Snapshot
from app.servers.models import ServerProfile

HEARTBEAT_EVERY = 5.0
"""Seconds between two heartbeats of a loop that works."""
STALE_AFTER = 30.0
"""A heartbeat older than this says the loop has stopped (readiness fails, alerts fire)."""
FORGET_AFTER = timedelta(days=1)
"""Rows of loops that vanished without saying goodbye (kill -9) are removed after this."""
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
"""Seconds the dispatcher and the webhook sender wait after a failed pass: doubling from
BACKOFF_BASE up to BACKOFF_MAX (app/delivery/supervised.py's loops back off longer)."""


def new_loop_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


class Heartbeats:
    """One loop's row: written by the loop, read by /readyz and /metrics."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], loop: str) -> None:
        self.sessions = sessions
        self.id = new_loop_id()
        self.loop = loop
        self.last: float | None = None
        """When the last heartbeat was written, on the monotonic clock."""

    async def beat(self, now: float) -> None:
        """The loop made progress: write beat_at and clear any error it had."""
        async with transaction(self.sessions) as session:
            at = utcnow()
            done = await session.execute(
                update(Heartbeat).where(Heartbeat.id == self.id).values(beat_at=at, error=None)
            )
            if not getattr(done, "rowcount", 0):
                await session.execute(
                    delete(Heartbeat).where(Heartbeat.beat_at < at - FORGET_AFTER)
                )
                session.add(
                    Heartbeat(
                        id=self.id,
                        loop=self.loop,
                        host=socket.gethostname()[:255],
                        pid=os.getpid(),
                        started_at=at,
                        beat_at=at,
                    )
                )
        self.last = now

    async def failed(self, error: str) -> None:
        """Keep the loop's last error on its row (beat_at stays: the loop made no progress)."""
        async with transaction(self.sessions) as session:
            await session.execute(
                update(Heartbeat)
                .where(Heartbeat.id == self.id)
                .values(error=f"{utcnow().isoformat(timespec='seconds')} {error}"[:2000])
            )

    async def remove(self) -> None:
        async with transaction(self.sessions) as session:
            await session.execute(delete(Heartbeat).where(Heartbeat.id == self.id))

    async def goodbye(self, log: logging.Logger) -> None:
        """Remove the row as the loop ends; when the database is away, say so and leave it
        (FORGET_AFTER removes it)."""
        try:
            await self.remove()
        except Exception as err:
            log.warning("the heartbeat row %s stays behind: %s", self.id, err)


async def survived(
    err: Exception,
    failures: int,
    heartbeats: Heartbeats,
    metrics: Metrics,
    log: logging.Logger,
    *,
    backoff: tuple[float, float] = (BACKOFF_BASE, BACKOFF_MAX),
) -> tuple[str, float]:
    """What every supervised loop does with a pass that raised (the database away, a bug): log it
    with its traceback, count it in postroom_loop_errors_total, keep it on the heartbeat row.
    Returns the error as text and the seconds to back off before the next pass (`backoff`: the
    first delay, doubled per failure in a row up to the second)."""
    base, cap = backoff
    delay = min(cap, base * 2 ** (failures - 1))
    log.error(
        "%s pass failed (%d in a row); trying again in %.1f s",
        heartbeats.loop,
        failures,
        delay,
        exc_info=err,
    )
    metrics.loop_errors.labels(loop=heartbeats.loop).inc()
    error = f"{type(err).__name__}: {err}"
    try:
        await heartbeats.failed(error)
    except Exception as unrecorded:
        log.warning("the error could not be recorded on the heartbeat row: %s", unrecorded)
    return error, delay


async def heartbeat_age(session: AsyncSession, loop_id: str) -> float | None:
    """Seconds since the loop's last heartbeat, or None when it has none."""
    beat = await session.scalar(select(Heartbeat.beat_at).where(Heartbeat.id == loop_id))
    return None if beat is None else (utcnow() - beat).total_seconds()


async def snapshot(session: AsyncSession) -> Snapshot:
    """Queue, loops and profiles as every replica sees them."""
    now = utcnow()
    by_status = await session.execute(select(Message.status, func.count()).group_by(Message.status))
    oldest: datetime | None = await session.scalar(
        select(func.min(Message.next_attempt_at)).where(
            Message.status == "queued", Message.next_attempt_at <= now
        )
    )
    beats = await session.execute(
        select(Heartbeat.id, Heartbeat.loop, Heartbeat.host, Heartbeat.beat_at)
    )
    health = await session.execute(
        select(ServerProfile.health, func.count()).group_by(ServerProfile.health)
    )
    failing = await session.execute(
        select(ServerProfile.name, ServerProfile.type)
        .where(ServerProfile.health == "failing")
        .order_by(ServerProfile.name)
    )
    quotas = (
        await session.execute(
            select(QuotaBucket.profile, QuotaBucket.held, QuotaBucket.throttled_until)
        )
    ).all()
    return Snapshot(
        messages={status: count for status, count in by_status},
        oldest_due=max(0.0, (now - _aware(oldest)).total_seconds()) if oldest else 0.0,
        loops=[
            LoopBeat(id, loop, host, (now - beat_at).total_seconds())
            for id, loop, host, beat_at in beats
        ],
        stale_after=STALE_AFTER,
        profiles={h: count for h, count in health},
        failing=[FailingProfile(name, type_) for name, type_ in failing],
        held={name: held for name, held, _ in quotas if held},
        throttled={
            name: (until - now).total_seconds()
            for name, _, until in quotas
            if until and until > now
        },
    )


def _aware(value: datetime) -> datetime:
    """An aggregate's result skips the column type's conversion on SQLite: it comes back naive
    (and, there, as text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)
