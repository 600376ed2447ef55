"""The suppression check alone, in-process: what the dispatcher's per-batch lookup (and intake's)
costs per message on the embedded database, with an empty list and with 100,000 entries.

The end-to-end scenarios (`run.py --only suppress`) say whether the whole path slows down, but on
a shared machine their spread is wider than 5 %; this times the one query the check adds, so the
fraction of the end-to-end cost it takes can be stated. Usage:

    .venv/bin/python bench/suppress_check.py [--entries 100000] [--batches 16,128] [--reps 300]

Both lookups are per batch: intake's per group commit (a few to a few dozen messages under load),
the dispatcher's per claim (up to POSTROOM_DISPATCHER_BATCH, 128), so the cost per message is
given for a small and a full batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from app import migrate
from app.config import Settings
from app.db import create_engine, sessionmaker, transaction
from app.suppressions import service
from app.suppressions.models import SUPPRESSIONS


async def measure(entries: int, batch: int, reps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), _env_file=None)  # type: ignore[call-arg]
        await asyncio.to_thread(migrate.upgrade, settings)
        engine = create_engine(settings)
        sessions = sessionmaker(engine)
        try:
            if entries:
                rows = [
                    service.import_row(f"suppressed{i}@example.net", None, "manual")
                    for i in range(entries)
                ]
                async with transaction(sessions) as session:
                    for start in range(0, entries, 10_000):
                        await session.execute(SUPPRESSIONS.insert(), rows[start : start + 10_000])
            timings: list[float] = []
            cpu: list[float] = []
            for rep in range(reps):
                # the bench's own recipients: none on the list, a fresh batch each time; one in
                # ten a suppressed address, so the found rows are read back too
                addresses = [f"rcpt{rep * batch + i}@example.com" for i in range(batch)]
                addresses[::10] = [f"suppressed{i}@example.net" for i in range(0, batch, 10)]
                async with transaction(sessions) as session:
                    began, began_cpu = time.perf_counter(), time.process_time()
                    listed = await service.listed(session, addresses)
                    held = sum(listed.why(a, "bench") is not None for a in addresses)
                    timings.append(time.perf_counter() - began)
                    cpu.append(time.process_time() - began_cpu)
                assert held == (len(addresses[::10]) if entries else 0)
        finally:
            await engine.dispose()
    per_batch = statistics.median(timings)
    cpu_per_batch = statistics.mean(cpu)
    return {
        "entries": entries,
        "batch": batch,
        "median_batch_ms": round(per_batch * 1000, 3),
        "p90_batch_ms": round(sorted(timings)[int(0.9 * len(timings))] * 1000, 3),
        "median_us_per_message": round(per_batch / batch * 1e6, 1),
        "cpu_us_per_message": round(cpu_per_batch / batch * 1e6, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batches", default="16,128", help="addresses per lookup")
    parser.add_argument("--reps", type=int, default=1000)
    args = parser.parse_args()
    for batch in (int(b) for b in args.batches.split(",")):
        for entries in (0, args.entries):
            result = await measure(entries, batch, args.reps)
            print(json.dumps(result), flush=True)  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main())
