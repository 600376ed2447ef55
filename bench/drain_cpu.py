"""The dispatcher alone, in process: CPU and SQL statements per delivered message while it drains
a queue filled beforehand, on the embedded database (or PostgreSQL), to smtp-sink, on uvloop as
the service runs.

The end-to-end scenarios of run.py carry the API, the clients and the sink in their figures; this
times the dispatcher's own path from claim to the finished row, so an A/B of two trees run one
after the other (alternating rounds) shows what a change to the outbox or the send path costs.
It uses bench/inprocess.py, the profile API and app.wiring's Core and running_dispatcher.

    .venv/bin/python bench/drain_cpu.py [--messages 3000] [--connections 4] [--once]
        [--pg HOST:PORT] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from inprocess import message, running_app
from sqlalchemy import event, func, select, text

from app.cli_process import freeze_start_up_objects, run_loop
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.wiring import CORE, Core, running_dispatcher

SMTP_SINK = "/usr/sbin/smtp-sink"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _fill(client: httpx.AsyncClient, messages: int, sink: int, connections: int) -> None:
    profile = {
        "name": "bench",
        "type": "smtp",
        "isDefault": True,
        "senderEmail": "bench@example.com",
        "settings": {
            "host": "127.0.0.1",
            "port": sink,
            "ignoreTLS": True,
            "pool": True,
            "maxConnections": connections,
            "maxMessages": 100_000,
        },
    }
    answer = await client.post("/api/v1/servers", json=profile)
    assert answer.status_code == 201, answer.text
    for start in range(0, messages, 500):
        body = {"messages": [message(i) for i in range(start, min(start + 500, messages))]}
        answer = await client.post("/api/v1/messages/batch", json=body)
        assert answer.status_code in (200, 202), answer.text


async def _run_until_empty(core: Core) -> None:
    """The dispatcher as `postroom serve` runs it, until nothing is queued or sending."""
    async with running_dispatcher(core):
        while True:
            await asyncio.sleep(0.05)
            async with core.sessions() as session:
                left = await session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.status.in_(("queued", "sending")))
                )
            if not left:
                return


async def _drain_once(core: Core) -> None:
    """`postroom worker --once`: claim, load, send and finish a batch at a time, no polling (the
    steadier figure for an A/B of the per-message work)."""
    dispatcher = Dispatcher(
        core.sessions, core.settings, core.transports, core.metrics, core.ledger
    )
    await dispatcher.drain()
    await core.transports.aclose()


async def _fresh_database(server: str) -> str:
    """An empty PostgreSQL database `postroom_drain` on `server` (host:port); its URL."""
    conn = await asyncpg.connect(f"postgresql://postgres@{server}/postgres")
    try:
        await conn.execute("DROP DATABASE IF EXISTS postroom_drain WITH (FORCE)")
        await conn.execute("CREATE DATABASE postroom_drain")
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@{server}/postroom_drain"


async def _wal_bytes(core: Core, *, checkpoint: bool = False) -> int | None:
    """The cluster's WAL so far (PostgreSQL), for the drain's bytes per message. A checkpoint
    first makes the full-page images that follow the same in every run (each page's first
    change after it), rather than dependent on when the last one happened."""
    if core.engine.dialect.name != "postgresql":
        return None
    async with core.engine.connect() as conn:
        if checkpoint:
            await conn.execute(text("CHECKPOINT"))
        return int(await conn.scalar(text("SELECT wal_bytes FROM pg_stat_wal")))


async def measure(
    messages: int,
    sink: int,
    profile: Path | None,
    *,
    connections: int,
    once: bool,
    pg: str | None,
) -> dict[str, Any]:
    async with running_app(await _fresh_database(pg) if pg else None) as (app, client):
        await _fill(client, messages, sink, connections)
        core = CORE.of(app)
        statements: Counter[str] = Counter()

        def count(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
            if not sql.startswith("SELECT count(*)"):  # the bench's own polls
                statements[sql.split(None, 1)[0].upper()] += 1

        event.listen(core.engine.sync_engine, "before_cursor_execute", count)
        freeze_start_up_objects()  # as `postroom serve` and `worker` do
        collecting: list[float] = []
        collected = [0.0]

        def timed(phase: str, _info: dict[str, Any]) -> None:
            if phase == "start":
                collecting.append(time.process_time())
            elif collecting:
                collected[0] += time.process_time() - collecting.pop()

        gc.callbacks.append(timed)
        profiler = cProfile.Profile() if profile else None
        wal = await _wal_bytes(core, checkpoint=True)
        began, wall = time.process_time(), time.monotonic()
        if profiler:
            profiler.enable()
        await (_drain_once(core) if once else _run_until_empty(core))
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - began, time.monotonic() - wall
        wal_after = await _wal_bytes(core)
        gc.callbacks.remove(timed)
        if profiler and profile:
            profiler.dump_stats(profile)
    return {
        "cpu_ms_per_message": round(cpu / messages * 1000, 4),
        "gc_ms_per_message": round(collected[0] / messages * 1000, 4),
        "messages_per_second": round(messages / wall),
        "statements_per_message": round(sum(statements.values()) / messages, 3),
        "wal_bytes_per_message": (
            None if wal is None or wal_after is None else round((wal_after - wal) / messages)
        ),
        "statements": dict(statements),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="smtp-sink's (default: a free one)")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--once", action="store_true", help="drain() instead of run()")
    parser.add_argument(
        "--pg",
        metavar="HOST:PORT",
        help="on PostgreSQL (a fresh database postroom_drain there) instead of SQLite; reports "
        "WAL bytes per message too (cluster-wide: give it a cluster nothing else writes to)",
    )
    args = parser.parse_args()
    args.port = args.port or _free_port()
    os.environ.setdefault("POSTROOM_LOG_LEVEL", "WARNING")
    sink = subprocess.Popen(
        [SMTP_SINK, "-c", "-u", "nobody", f"127.0.0.1:{args.port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = run_loop(
            measure(
                args.messages,
                args.port,
                args.profile,
                connections=args.connections,
                once=args.once,
                pg=args.pg,
            )
        )
    finally:
        sink.terminate()
        sink.wait()
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
