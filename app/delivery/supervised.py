"""Loops that never die silently, and what each tells /readyz.

`Supervised` runs a step every so often for the loops that are not the dispatcher or the webhook
sender (the bounce listener and pollers, the submission listener, the retention purge): a step
that raises is logged with its traceback, counted in postroom_loop_errors_total, kept on the
loop's heartbeat row (app/delivery/liveness.py's `survived`, as the dispatcher does), and the loop
backs off and goes on. It beats at most every HEARTBEAT_EVERY seconds, after steps that worked, so
a loop that keeps failing goes stale in /metrics.

Every running loop answers `readiness(session)` with a `Readiness`: why it does not do its work
now (None: it does) and what /readyz shows of it; app/main.py asks each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.delivery.liveness import HEARTBEAT_EVERY, Heartbeats, survived
from app.metrics import Metrics

log = logging.getLogger("postroom.loops")

BACKOFF = (1.0, 300.0)
"""Seconds a failed step waits before the next: doubling from the first up to the second (a
mailbox or a port that is away stays away for a while; the dispatcher retries sooner)."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """What a running loop tells /readyz."""

    problem: str | None
    """Why it does not do its work now; None when it does."""
    shown: dict[str, Any] = field(default_factory=dict)
    """What /readyz shows of it under its name (its last error, its heartbeat)."""


def task_readiness(what: str, task: asyncio.Task[None] | None, last_error: str | None) -> Readiness:
    """The check of a loop whose work waits when it is down (webhooks, bounces, the purge): its
    task runs; its last error, if any, is shown."""
    problem = None if task is not None and not task.done() else f"the {what} is not running"
    return Readiness(problem, {"lastError": last_error} if last_error else {})


class Supervised:
    """Runs `step` every `interval` seconds until stopped (see the module's docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        loop: str,
        step: Callable[[], Awaitable[object]],
        interval: float,
        *,
        what: str,
    ) -> None:
        self.heartbeats = Heartbeats(sessions, loop)
        self.metrics = metrics
        self.step = step
        self.interval = interval
        self.what = what
        """What /readyz calls it: "the {what} is not running"."""
        self.last_error: str | None = None
        self.task: asyncio.Task[None] | None = None
        """The running loop, set by `start`."""

    def start(self, stopping: asyncio.Event) -> asyncio.Task[None]:
        """Run it in the background until `stopping` is set; returns the task."""
        self.task = asyncio.create_task(self.run(stopping))
        return self.task

    async def readiness(self, session: AsyncSession) -> Readiness:
        return task_readiness(self.what, self.task, self.last_error)

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        due = time.monotonic()
        try:
            while not stopping.is_set():
                now = time.monotonic()
                try:
                    if now >= due:
                        await self.step()
                        due = time.monotonic() + self.interval
                        failures = 0
                    last = self.heartbeats.last
                    if last is None or now - last >= HEARTBEAT_EVERY:
                        await self.heartbeats.beat(now)
                except Exception as err:
                    failures += 1
                    self.last_error, delay = await survived(
                        err, failures, self.heartbeats, self.metrics, log, backoff=BACKOFF
                    )
                    due = time.monotonic() + delay
                wait = min(max(0.0, due - time.monotonic()), HEARTBEAT_EVERY)
                await _sleep(stopping, wait)
        finally:
            await self.heartbeats.goodbye(log)


async def _sleep(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
