"""What queueing webhook deliveries adds to record_events, the dispatcher's finish transaction.

Times record_events for a finish-sized batch of Postroom's own events (128 `sent`), in its own
transaction, on a fresh SQLite file and on PostgreSQL (POSTROOM_BENCH_PG, a database it may empty;
set it empty for SQLite only), in five cases: the enqueue switched off (the cost before webhooks),
no endpoint, an endpoint taking other types (both skipped without a query: the subscribed types
are known for a second), one and three endpoints taking `sent` (one INSERT ... SELECT of 128 and
384 rows).

    .venv/bin/python bench/webhooks_enqueue.py [rounds]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, text

from app import migrate
from app.config import Settings
from app.db import create_engine, new_id, sessionmaker, transaction, utcnow
from app.delivery.vocabulary import DeliveryEvent
from app.events import service as events
from app.events.service import record_events
from app.webhooks import enqueue
from app.webhooks.models import DELIVERIES, ENDPOINTS, SUBSCRIPTIONS

BATCH = 128
PG = os.environ.get(
    "POSTROOM_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test_webhooks"
)


async def _nothing(*_: Any) -> None:
    return None


def batch() -> list[DeliveryEvent]:
    return [
        DeliveryEvent(
            message_pk=None,
            type="sent",
            email=f"r{i}@example.com",
            profile="relay",
            reason="250 2.0.0 Ok: queued",
            diagnostic_code="250",
        )
        for i in range(BATCH)
    ]


async def endpoints(sessions: Any, types: list[str], count: int) -> None:
    async with transaction(sessions) as session:
        await session.execute(delete(ENDPOINTS))
        for _ in range(count):
            endpoint_id = new_id()
            now = utcnow()
            await session.execute(
                insert(ENDPOINTS).values(
                    id=endpoint_id,
                    url="http://127.0.0.1:9/",
                    description="",
                    enabled=True,
                    secret="x",
                    created_at=now,
                    updated_at=now,
                )
            )
            for type_ in types:
                await session.execute(
                    insert(SUBSCRIPTIONS).values(endpoint_id=endpoint_id, event_type=type_)
                )
    await asyncio.sleep(enqueue.FRESH_FOR)


async def timed(sessions: Any, rounds: int) -> tuple[float, float]:
    """Median and p90 of record_events alone (ms), each call in its own transaction."""
    samples = []
    for _ in range(rounds):
        events_ = batch()
        async with transaction(sessions) as session:
            await session.execute(text("SELECT 1"))
            started = time.perf_counter()
            await record_events(session, events_)
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)]


async def bench(url: str | None, rounds: int) -> None:
    data = Path(tempfile.mkdtemp())
    settings = Settings(data_dir=data, database_url=url, _env_file=None)
    if url is not None:
        engine = create_engine(settings)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()
    await asyncio.to_thread(migrate.upgrade, settings)
    engine = create_engine(settings)
    sessions = sessionmaker(engine)
    cases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("no endpoint", lambda: endpoints(sessions, [], 0)),
        ("endpoint for other types", lambda: endpoints(sessions, ["bounced", "complained"], 1)),
        ("1 endpoint takes sent", lambda: endpoints(sessions, ["sent"], 1)),
        ("3 endpoints take sent", lambda: endpoints(sessions, ["sent"], 3)),
    ]
    name = "PostgreSQL" if url else "SQLite"
    original = events.enqueue_events
    events.enqueue_events = _nothing  # type: ignore[assignment]
    await timed(sessions, 20)
    base = await timed(sessions, rounds)
    events.enqueue_events = original
    print(f"{name}: record_events, {BATCH} events, ms (median / p90)")  # noqa: T201
    print(f"  {'enqueue off (before webhooks)':32} {base[0]:7.2f} {base[1]:7.2f}")  # noqa: T201
    for label, setup in cases:
        await setup()
        await timed(sessions, 10)
        median, p90 = await timed(sessions, rounds)
        extra = median - base[0]
        print(f"  {label:32} {median:7.2f} {p90:7.2f}   (+{extra:.2f})")  # noqa: T201
        async with transaction(sessions) as session:
            await session.execute(delete(DELIVERIES))
    await engine.dispose()


async def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    await bench(None, rounds)
    if PG:
        await bench(PG, rounds)


if __name__ == "__main__":
    asyncio.run(main())
