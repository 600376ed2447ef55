"""Accepted means durable: reliability checks 1 (durability settings, refused at start-up when
missing) and 4 (the outbox row and the answer are one transaction)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Connection

from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.wiring import Core
from tests.conftest import PG_URL, SENDER, basic
from tests.delivery.conftest import add_smtp_profile, send
from tests.reliability.conftest import Report
from tests.smtpd import StartServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.anyio
async def test_every_pooled_connection_is_durable(runtime: Core, report: Report) -> None:
    """Check 1: SQLite journal_mode=wal and synchronous=2 (FULL) on every pooled connection;
    PostgreSQL synchronous_commit=on and fsync=on."""
    engine = runtime.engine
    pool = engine.pool
    capacity = pool.size() + max(getattr(pool, "_max_overflow", 0), 0)  # type: ignore[attr-defined]
    held = min(3, capacity)  # SQLite's engine has a single connection
    seen: list[tuple[Any, ...]] = []
    for _ in range(2):  # fresh connections, then the same ones back from the pool
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(engine.connect()) for _ in range(held)]
            for conn in conns:
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                if engine.dialect.name == "sqlite":
                    values = []
                    for pragma in ("journal_mode", "synchronous"):
                        async with raw.execute(f"PRAGMA {pragma}") as cursor:
                            row = await cursor.fetchone()
                            assert row is not None
                            values.append(row[0])
                    seen.append((id(raw), *values))
                else:
                    commit = await raw.fetchval("SHOW synchronous_commit")
                    fsync = await raw.fetchval("SHOW fsync")
                    seen.append((id(raw), commit, fsync))
    settings = {tuple(row[1:]) for row in seen}
    expected = {("wal", 2)} if engine.dialect.name == "sqlite" else {("on", "on")}
    assert settings == expected
    report(
        1,
        f"{engine.dialect.name}: {len(seen)} connection checkouts ({len({r[0] for r in seen})} "
        f"connections), all {sorted(settings)}",
    )


def start(env: dict[str, str], *args: str, patch: str = "", timeout: float = 60) -> tuple[int, str]:
    """Run `postroom ARGS` in a fresh interpreter (after `patch`); its exit code and stderr."""
    code = (
        f"{patch}\nimport sys\nfrom app.cli import main\nsys.argv = ['postroom', *{args!r}]\nmain()"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return completed.returncode, completed.stderr


RELAXED_SQLITE = """
import app.db
def relaxed(engine):
    from sqlalchemy import event
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection, _):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
app.db._sqlite_pragmas = relaxed
"""


@pytest.fixture
def pg_relaxed_database() -> Iterator[str]:
    """A scratch PostgreSQL database whose sessions default to synchronous_commit=off."""
    assert PG_URL is not None
    name = f"postroom_relaxed_{uuid.uuid4().hex[:8]}"
    admin_url = PG_URL.replace("postgresql+asyncpg", "postgresql")

    async def run(*statements: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(
        run(f'CREATE DATABASE "{name}"', f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    )
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_start_up_refuses_a_database_that_may_lose_commits(
    tmp_path: Path, report: Report, request: pytest.FixtureRequest
) -> None:
    """Check 1: `postroom worker` and `postroom serve` exit non-zero, naming DurabilityError, when
    SQLite runs with synchronous=NORMAL (or PostgreSQL with synchronous_commit=off)."""
    env = {
        "POSTROOM_DATA_DIR": str(tmp_path / "data"),
        "POSTROOM_ADMIN_PASSWORD": "durability-admin-1",
        "POSTROOM_DATABASE_URL": "",
    }
    runs = {
        "sqlite worker, synchronous=NORMAL": start(env, "worker", "--once", patch=RELAXED_SQLITE),
        "sqlite serve, synchronous=NORMAL": start(
            env, "serve", "--port", "1", "--no-dispatcher", patch=RELAXED_SQLITE
        ),
    }
    if PG_URL is not None:
        url = request.getfixturevalue("pg_relaxed_database")
        pg_env = {**env, "POSTROOM_DATABASE_URL": url}
        runs["postgresql worker, synchronous_commit=off"] = start(pg_env, "worker", "--once")
    codes = {name: code for name, (code, _) in runs.items()}
    assert all(code != 0 for code in codes.values()), codes
    for name, (_, stderr) in runs.items():
        assert "DurabilityError" in stderr, (name, stderr[-2000:])
    report(1, f"start-up exit codes: {codes}, each naming DurabilityError")


@pytest.mark.anyio
async def test_a_failure_before_commit_leaves_no_message(
    app_runtime: tuple[Any, Core],
    admin: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """Check 4: a failure after the INSERT and before the COMMIT on 100 requests -> 100 non-2xx
    answers, 0 outbox rows, 0 messages at the sink."""
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    response = await admin.post(
        "/api/v1/users", json={"name": SENDER[0], "role": "sender", "password": SENDER[1]}
    )
    assert response.status_code == 201
    inserted: list[bool] = []
    engine = runtime.engine.sync_engine

    def saw_insert(conn: Connection, *args: Any) -> None:
        statement = str(args[1]).lstrip().upper()
        if statement.startswith(("INSERT INTO MESSAGES", "INSERT INTO RECIPIENTS")):
            conn.info["inserted"] = True

    def fail_commit(conn: Connection) -> None:
        if conn.info.pop("inserted", False):
            inserted.append(True)
            raise RuntimeError("injected: the process dies between INSERT and COMMIT")

    def forget(conn: Connection) -> None:
        conn.info.pop("inserted", None)

    hooks = [("after_cursor_execute", saw_insert), ("commit", fail_commit), ("rollback", forget)]
    transport = httpx.ASGITransport(app=app_runtime[0], raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://postroom.test", headers=basic(SENDER)
    ) as client:
        for name, hook in hooks:
            event.listen(engine, name, hook)
        try:
            answers = [
                await client.post(
                    "/api/v1/messages", json={"to": [f"u{i}@example.com"], "text": "t"}
                )
                for i in range(100)
            ]
        finally:
            for name, hook in hooks:
                event.remove(engine, name, hook)
        control = await send(client, to=["control@example.com"])
    failed = sum(1 for a in answers if not a.is_success)
    assert failed == 100
    assert {a.status_code for a in answers} == {500}
    assert inserted == [True] * 100, "each request had inserted its rows when it failed"
    async with runtime.sessions() as session:
        ids = list(await session.scalars(select(Message.id)))
    assert ids == [control]
    await Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    ).drain()
    at_sink = [r for t in server.transactions for r in t.rcpt_tos]
    assert at_sink == ["control@example.com"]
    report(
        4,
        f"{failed}/100 non-2xx after the INSERT, {len(ids) - 1} outbox rows and "
        f"{len(at_sink) - 1} messages at the sink from them (the control request: 1 and 1)",
    )
