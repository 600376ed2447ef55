"""Runs the retention purge beside a dispatcher (`postroom serve` with its dispatcher, and each
`postroom worker`), supervised as the other loops are: a pass that raises is logged with its
traceback, counted and backed off from; a heartbeat row `purge` shows it alive in /metrics, and
/readyz fails while it is not running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.delivery.supervised import Supervised
from app.metrics import Metrics
from app.retention.purge import Purge


@asynccontextmanager
async def running_purge(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, metrics: Metrics
) -> AsyncIterator[Supervised]:
    """Run the purge in the background for the duration of the block."""
    purge = Purge(sessions, settings)
    supervised = Supervised(
        sessions,
        metrics,
        "purge",
        purge.step,
        settings.purge_interval,
        what="retention purge",
    )
    stopping = asyncio.Event()
    await supervised.heartbeats.beat(time.monotonic())
    task = supervised.start(stopping)
    try:
        yield supervised
    finally:
        stopping.set()
        await asyncio.gather(task, return_exceptions=True)
