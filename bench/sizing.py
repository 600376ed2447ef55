"""What PostgreSQL pays per delivered message: statements, transactions, WAL, row and index writes,
and the CPU of its own processes, read from its statistics views around a measured run.

WAL and pg_stat_statements are cluster-wide, so the figures are clean only on a cluster nothing
else uses while the bench runs: bench/README.md shows how to start one on port 5433, and
POSTROOM_BENCH_PG_SERVER=127.0.0.1:5433 points the bench at it. `run.py --only sizing` uses this
module around one PostgreSQL + 1 worker end-to-end run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from harness import cpu_seconds
from postroom import PG_ADMIN_DSN, PG_DATABASE

TOP_STATEMENTS = 12
"""Statements listed one by one (by calls), the rest summed."""


def _children(parent: int) -> list[int]:
    """The postmaster's processes (backends, WAL writer, checkpointer, ...)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


async def _postmaster() -> int:
    """The pid of the PostgreSQL server the bench uses."""
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        data = Path(await conn.fetchval("SHOW data_directory"))
    finally:
        await conn.close()
    return int((data / "postmaster.pid").read_text().split()[0])


@dataclass(slots=True)
class PostgresCpu:
    """The CPU of PostgreSQL's own processes (backends, WAL writer, checkpointer, ...) from
    /proc, since `start`: what every PostgreSQL end-to-end run adds to the service's CPU per
    message. Cluster-wide, like the statistics below."""

    postmaster: int
    cpu: dict[int, float]

    @classmethod
    async def start(cls) -> PostgresCpu:
        postmaster = await _postmaster()
        return cls(postmaster, {p: cpu_seconds(p) for p in _children(postmaster)})

    def so_far(self) -> float:
        """CPU seconds since `start`: read it before the service stops, as its backends'
        counters leave /proc with them."""
        return sum(cpu_seconds(p) - self.cpu.get(p, 0.0) for p in _children(self.postmaster))


@dataclass(slots=True)
class DatabaseCost:
    """Counters at the start of a run; `per_message` reads them again and divides."""

    cpu: PostgresCpu
    tables: dict[str, tuple[int, int, int, int]]
    xacts: int

    @classmethod
    async def start(cls) -> DatabaseCost:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
            await conn.execute("SELECT pg_stat_reset_shared('wal')")
        finally:
            await conn.close()
        tables, xacts = await _database_counters()
        return cls(await PostgresCpu.start(), tables, xacts)

    async def per_message(self, messages: int, cpu: float) -> dict[str, Any]:
        """Call once the service has stopped: a backend's statistics reach the views when it
        exits (or, idle, only after ten seconds)."""
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            wal = await conn.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
            statements = await conn.fetch(
                "SELECT s.query, s.calls, s.rows, s.wal_bytes FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1"
                " ORDER BY s.calls DESC",
                PG_DATABASE,
            )
        finally:
            await conn.close()
        tables, xacts = await _database_counters()
        indexes = await _indexes()
        rows: dict[str, dict[str, float]] = {}
        index_writes = 0
        for table, now in tables.items():
            before = self.tables.get(table, (0, 0, 0, 0))
            ins, upd, hot, dele = (a - b for a, b in zip(now, before, strict=True))
            if ins or upd or dele:
                rows[table] = {
                    "inserted": ins / messages,
                    "updated": upd / messages,
                    "hot_updated": hot / messages,
                    "deleted": dele / messages,
                }
            # every index gets an entry per inserted row and per update that is not HOT
            index_writes += (ins + upd - hot) * indexes.get(table, 0)
        calls = sum(s["calls"] for s in statements)
        return {
            "messages": messages,
            "pg_cpu_ms_per_message": 1000 * cpu / messages,
            "statements_per_message": calls / messages,
            "transactions_per_message": (xacts - self.xacts) / messages,
            "wal_bytes_per_message": int(wal["wal_bytes"]) / messages,
            "wal_records_per_message": wal["wal_records"] / messages,
            "wal_fpi_per_message": wal["wal_fpi"] / messages,
            "index_writes_per_message": index_writes / messages,
            "rows_per_message": rows,
            "statements": [
                {
                    "query": " ".join(s["query"].split())[:160],
                    "calls_per_message": s["calls"] / messages,
                    "wal_bytes_per_message": int(s["wal_bytes"]) / messages,
                }
                for s in statements[:TOP_STATEMENTS]
            ],
        }


async def _database_counters() -> tuple[dict[str, tuple[int, int, int, int]], int]:
    conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{PG_DATABASE}", timeout=10)
    try:
        # the statistics a backend collects reach the views when it is idle or every second
        await conn.execute("SELECT pg_stat_force_next_flush()")
        found = await conn.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del"
            " FROM pg_stat_user_tables"
        )
        xacts = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return {r["relname"]: (r[1], r[2], r[3], r[4]) for r in found}, int(xacts)


async def _indexes() -> dict[str, int]:
    conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{PG_DATABASE}", timeout=10)
    try:
        found = await conn.fetch(
            "SELECT tablename, count(*) AS n FROM pg_indexes WHERE schemaname = 'public'"
            " GROUP BY tablename"
        )
    finally:
        await conn.close()
    return {r["tablename"]: int(r["n"]) for r in found}
