"""The claim transaction alone, in-process: what a claim of due messages costs per batch, on
SQLite and PostgreSQL, for messages of a profile without a rate limit (the hot path, which the
per-profile quotas must leave as it was) and, where the tree has them, of a rate-limited profile.

The end-to-end drain (`run.py --only drain`) spreads wider than the few hundred microseconds a
claim takes; this times `outbox.claim` itself on a queue of `--queued` due messages, each claim
put back (outside the timing) so every round claims the same kind of rows. Usage:

    .venv/bin/python bench/claim_quota.py [--pg postgresql+asyncpg://...] [--batch 128]

It uses only what every tree has (a profile without `rateLimit`, `outbox.claim`), so copying it
into an older checkout gives the before; `--limited` adds a rate-limited profile's run (a limit
far above the batch: every message is granted, the bucket is read and written on every claim).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from app import migrate
from app.config import Settings
from app.db import create_engine, new_id, sessionmaker, transaction, utcnow
from app.delivery import outbox
from app.delivery.models import MESSAGES, RECIPIENTS, Message
from app.servers.models import ServerProfile


async def fill(sessions: Any, profile: str, queued: int, rate_limit: dict[str, Any] | None) -> None:
    now = utcnow()
    async with transaction(sessions) as session:
        await session.execute(text("DELETE FROM messages"))
        await session.execute(text("DELETE FROM server_profiles"))
        row = ServerProfile(name=profile, type="smtp", settings={"host": "localhost"})
        if rate_limit is not None:
            row.rate_limit = rate_limit  # type: ignore[attr-defined]
        session.add(row)
        await session.flush()
        messages = [
            {
                "id": new_id(),
                "message_id": f"<{n}@bench>",
                "status": "queued",
                "sender": "bench@example.com",
                "subject": "bench",
                "server": profile,
                "payload": {"from": {"email": "bench@example.com"}, "to": ["a@example.com"]},
                "created_by": "bench",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for n in range(queued)
        ]
        await session.execute(MESSAGES.insert(), messages)
        await session.execute(
            RECIPIENTS.insert(),
            [{"message_pk": m["id"], "email": "a@example.com", "kind": "to"} for m in messages],
        )


async def measure(
    url: str | None, batch: int, reps: int, queued: int, limited: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), database_url=url, _env_file=None)  # type: ignore[call-arg]
        await asyncio.to_thread(migrate.upgrade, settings)
        engine = create_engine(settings)
        sessions = sessionmaker(engine)
        limit = {"perSecond": 1_000_000, "count": "messages"} if limited else None
        try:
            await fill(sessions, "bench", queued, limit)
            timings: list[float] = []
            for _ in range(reps):
                async with transaction(sessions) as session:
                    began = time.perf_counter()
                    claims = await outbox.claim(session, limit=batch, lease=60)
                    timings.append(time.perf_counter() - began)
                assert len(claims) == batch
                async with transaction(sessions) as session:
                    await session.execute(
                        update(Message)
                        .where(Message.status == "sending")
                        .values(status="queued", lease_until=None)
                    )
        finally:
            await engine.dispose()
    median = statistics.median(timings)
    return {
        "db": "postgresql" if url else "sqlite",
        "limited": limited,
        "batch": batch,
        "median_claim_ms": round(median * 1000, 3),
        "p90_claim_ms": round(sorted(timings)[int(0.9 * len(timings))] * 1000, 3),
        "median_us_per_message": round(median / batch * 1e6, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg", help="a PostgreSQL URL (its tables are emptied)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--queued", type=int, default=5000)
    parser.add_argument("--limited", action="store_true", help="also a rate-limited profile")
    args = parser.parse_args()
    for url in (None, args.pg) if args.pg else (None,):
        for limited in (False, True) if args.limited else (False,):
            result = await measure(url, args.batch, args.reps, args.queued, limited)
            print(json.dumps(result), flush=True)  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main())
