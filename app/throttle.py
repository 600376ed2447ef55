"""Limits shared by every process through the database: N replicas give the same limits as one.

A `Throttle` counts events per key in fixed windows (one row per key and window, bumped by an
atomic upsert) and judges the limit over a sliding window with the two-window estimate that
Cloudflare and nginx's limit_req use: the previous window's count weighted by the part of it
that still overlaps the sliding window, plus the current window's count. Two rows per key, one
indexed read and one upsert per event, the same SQL on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Float, String, Table, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, table_of
from app.errors import TooManyRequests

MAX_KEY = 400
"""The column's length: longer keys (or keys with control characters) are stored hashed."""


class ThrottleCounter(Base):
    """Events for one key in one fixed window (`window` = start time // window length)."""

    __tablename__ = "throttle_counters"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    window: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    count: Mapped[int]


COUNTERS = table_of(ThrottleCounter)


@dataclass(frozen=True, slots=True)
class Usage:
    """One key's counts around `now`: the previous and the current fixed window."""

    previous: int
    current: int
    elapsed: float
    """How far into the current window `now` is, as a fraction of it (0 <= elapsed < 1)."""

    def estimate(self) -> float:
        """Events in the sliding window that ends now."""
        return self.previous * (1.0 - self.elapsed) + self.current


class Throttle:
    """At most `limit` events per key in any `period` seconds (sliding), shared through the
    database. `hit` counts an event only when it fits (atomic across processes); `check` and
    `record` are the two halves, for events known only afterwards (a failed login).

    Every call is its own short transaction on its own connection: never call it while holding
    a session (SQLite has one pooled connection).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        name: str,
        limit: int,
        what: str,
        period: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.name = name
        self.limit = limit
        self.what = what
        self.period = period
        self.clock = clock
        """Wall time, shared by every replica (a monotonic clock is per machine)."""
        self._prune_at = 0.0

    async def check(self, key: str) -> None:
        """Raise TooManyRequests (with Retry-After) when one more event would exceed the limit."""
        now = self.clock()
        async with self.engine.begin() as conn:
            usage = await self._usage(conn, self._key(key), now)
        if usage.estimate() + 1 > self.limit:
            self._refuse(usage, 1)

    async def record(self, key: str, n: int = 1) -> None:
        """Count `n` events now, whatever the limit."""
        now = self.clock()
        window = self._window(now)
        async with self.engine.begin() as conn:
            await conn.execute(_bump(conn), {"key": self._key(key), "window": window, "n": n})
        await self._maybe_prune(now)

    async def hit(self, key: str, n: int = 1) -> None:
        """Count `n` events if they fit in the limit, else raise TooManyRequests and count none.

        The upsert adds them only while the current window's count leaves room (its WHERE is
        evaluated on the row as locked by the conflict), so concurrent replicas never overshoot.
        """
        now = self.clock()
        key = self._key(key)
        window = self._window(now)
        async with self.engine.begin() as conn:
            usage = await self._usage(conn, key, now)
            room = self.limit - usage.previous * (1.0 - usage.elapsed)
            counted = None
            if usage.current + n <= room:
                params = {"key": key, "window": window, "n": n, "room": room}
                counted = (await conn.execute(_bump(conn, guarded=True), params)).scalar()
            if counted is None:
                usage = await self._usage(conn, key, now)
        if counted is None:
            self._refuse(usage, n)
        await self._maybe_prune(now)

    async def count(self, key: str) -> float:
        """The sliding-window estimate for `key` now (for tests and diagnostics)."""
        async with self.engine.begin() as conn:
            return (await self._usage(conn, self._key(key), self.clock())).estimate()

    def _refuse(self, usage: Usage, n: int) -> None:
        raise TooManyRequests(
            f"too many {self.what}; try again later", retry_after=self._retry_after(usage, n)
        )

    def _retry_after(self, usage: Usage, n: int) -> int:
        """Whole seconds until `n` more events fit, if nothing else is counted meanwhile."""
        room = self.limit - n
        if room < 0:
            return math.ceil(self.period)
        if usage.current <= room:
            # later in this window, once the previous window's weight has decayed enough
            needed = 1.0 - (room - usage.current) / usage.previous if usage.previous else 0.0
            wait = (needed - usage.elapsed) * self.period
        else:
            # in the next window, where this window's count becomes the decaying one
            needed = 1.0 - room / usage.current
            wait = (1.0 - usage.elapsed + needed) * self.period
        return max(1, math.ceil(wait - 1e-6))  # not a second more for a rounding error

    async def _usage(self, conn: AsyncConnection, key: str, now: float) -> Usage:
        window = self._window(now)
        rows = await conn.execute(
            select(COUNTERS.c.window, COUNTERS.c.count).where(
                COUNTERS.c.key == key, COUNTERS.c.window.in_((window - 1, window))
            )
        )
        counts = {w: c for w, c in rows}
        elapsed = now / self.period - window
        return Usage(counts.get(window - 1, 0), counts.get(window, 0), min(max(elapsed, 0.0), 1.0))

    def _window(self, now: float) -> int:
        return int(now // self.period)

    def _key(self, key: str) -> str:
        """This throttle's name, then the key; hashed when too long or not printable ASCII
        (PostgreSQL refuses NUL in text, and a path parameter can carry anything)."""
        full = f"{self.name}:{key}"
        if len(full) > MAX_KEY or not (full.isascii() and full.isprintable()):
            full = f"{self.name}:#{hashlib.sha256(key.encode(errors='surrogatepass')).hexdigest()}"
        return full

    async def _maybe_prune(self, now: float) -> None:
        """Delete this throttle's windows that no estimate reads any more, at most once a period
        per process: one range delete on the primary key, off the common path."""
        tick = time.monotonic()
        if tick < self._prune_at:
            return
        self._prune_at = tick + self.period
        prefix = f"{self.name}:"
        upper = prefix[:-1] + chr(ord(":") + 1)
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(COUNTERS).where(
                    COUNTERS.c.key >= prefix,
                    COUNTERS.c.key < upper,
                    COUNTERS.c.window < self._window(now) - 1,
                )
            )


def upsert(conn: AsyncConnection, table: Table) -> Any:
    """INSERT for the connection's dialect, with ON CONFLICT (both SQLite and PostgreSQL have it,
    as `excluded`, RETURNING and a WHERE on the update)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _bump(conn: AsyncConnection, *, guarded: bool = False) -> Any:
    """INSERT (key, window, n) ... ON CONFLICT (key, window) DO UPDATE SET count = count + n
    RETURNING count; guarded: only while count + n <= :room (else no row comes back)."""
    statement = upsert(conn, COUNTERS).values(
        key=bindparam("key"), window=bindparam("window"), count=bindparam("n")
    )
    total = COUNTERS.c.count + statement.excluded.count
    where = total <= bindparam("room", type_=Float()) if guarded else None
    return statement.on_conflict_do_update(
        index_elements=[COUNTERS.c.key, COUNTERS.c.window], set_={"count": total}, where=where
    ).returning(COUNTERS.c.count)
