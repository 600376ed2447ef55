"""The supervision every bounce loop shares (the SMTP listener, the IMAP and Graph pollers), as
the dispatcher's: a step that raises is logged with its traceback, counted in
postroom_loop_errors_total, kept on the loop's heartbeat row, and the loop backs off and goes on.
It beats at most every HEARTBEAT_EVERY seconds, after steps that worked, so a loop that keeps
failing goes stale in /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.delivery.liveness import HEARTBEAT_EVERY, Heartbeats
from app.metrics import Metrics

log = logging.getLogger("postroom.bounces")

BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0
"""Seconds a failed step waits before the next: doubling from BACKOFF_BASE up to BACKOFF_MAX."""


class Supervised:
    """Runs `step` every `interval` seconds until stopped (see the module's docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        loop: str,
        step: Callable[[], Awaitable[object]],
        interval: float,
    ) -> None:
        self.heartbeats = Heartbeats(sessions, loop)
        self.metrics = metrics
        self.step = step
        self.interval = interval
        self.last_error: str | None = None

    @property
    def loop(self) -> str:
        return self.heartbeats.loop

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
                    due = time.monotonic() + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1))
                    await self._survive(err, failures)
                wait = min(max(0.0, due - time.monotonic()), HEARTBEAT_EVERY)
                await _sleep(stopping, wait)
        finally:
            try:
                await self.heartbeats.remove()
            except Exception as err:
                log.warning("the heartbeat row %s stays behind: %s", self.heartbeats.id, err)

    async def _survive(self, err: Exception, failures: int) -> None:
        log.error("%s failed (%d in a row); backing off", self.loop, failures, exc_info=err)
        self.metrics.loop_errors.labels(loop=self.loop).inc()
        self.last_error = f"{type(err).__name__}: {err}"
        try:
            await self.heartbeats.failed(self.last_error)
        except Exception as unrecorded:
            log.warning("the error could not be recorded on the heartbeat row: %s", unrecorded)


async def _sleep(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
