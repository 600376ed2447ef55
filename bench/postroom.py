"""Postroom as the benchmarks run it: `postroom serve` and `postroom worker` subprocesses on a fresh
data dir (SQLite) or a fresh `postroom_bench` database (PostgreSQL), a profile pointing at a
sink, a sender user, and HTTP clients that post messages closed-loop or at a fixed rate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from harness import REPO, VENV_BIN, WORK, cpu_seconds, rss_kib, spawn, stop, wait_port
from rawhttp import RawClient

Database = Literal["sqlite", "pg"]

ADMIN_PASSWORD = "bench-admin-password"
SENDER = "bench"
SENDER_PASSWORD = "bench-sender-password"
PG_SERVER = os.environ.get("POSTROOM_BENCH_PG_SERVER", "127.0.0.1:5432")
"""host:port of the PostgreSQL the bench uses: a cluster of its own (see README, Sizing) keeps
other work out of its cluster-wide figures (WAL, pg_stat_statements)."""
PG_ADMIN_DSN = f"postgresql://postgres@{PG_SERVER}/postgres"
PG_DATABASE = "postroom_bench"
RUNS = [WORK / "runs"]
"""Where deployments live (a list, so the entry point can move it: quick runs use their own)."""
PG_TEMPLATE = "postroom_bench_queue"
PG_URL = f"postgresql+asyncpg://postgres@{PG_SERVER}/{PG_DATABASE}"
TEXT = "Hello,\n\nthis is benchmark message {i}.\nNothing to see here.\n\n-- \nThe bench\n"


def message_body(i: int) -> bytes:
    """One small message, as JSON bytes (built before the clock starts)."""
    return json.dumps(
        {"to": [f"rcpt{i}@example.com"], "subject": f"Bench message {i}", "text": TEXT.format(i=i)}
    ).encode()


def group_body(size: int) -> bytes:
    return json.dumps(
        {
            "recipients": [f"member{i}@example.com" for i in range(size)],
            "subject": "Bench group message",
            "text": TEXT.format(i="group"),
        }
    ).encode()


async def pg_available() -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def pg_version() -> str:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def pg_admin(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def pg_reset(template: str | None = None) -> None:
    """Drop and create the bench database (never `test`, which the test suite uses), empty or as
    a copy of `template`."""
    create = f"CREATE DATABASE {PG_DATABASE}" + (f" TEMPLATE {template}" if template else "")
    await pg_admin(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)", create)


async def pg_keep_as(name: str) -> None:
    """Rename the bench database to `name` (a template for later runs)."""
    await pg_admin(
        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        f"ALTER DATABASE {PG_DATABASE} RENAME TO {name}",
    )


@dataclass
class Postroom:
    """One deployment: an API process, maybe worker processes, one database."""

    name: str
    database: Database
    log_level: str = "WARNING"
    port: int = 0
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.workdir = RUNS[0] / self.name
        if self.workdir.exists():  # an earlier round's: keep its logs, not its data
            shutil.rmtree(self.workdir / "data", ignore_errors=True)
            rounds = 1
            while self.workdir.with_name(f"{self.name}.{rounds}").exists():
                rounds += 1
            self.workdir.rename(self.workdir.with_name(f"{self.name}.{rounds}"))
        (self.workdir / "data").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
        env |= {
            "POSTROOM_DATA_DIR": str(self.workdir / "data"),
            "POSTROOM_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "POSTROOM_SECRET_KEYS": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "POSTROOM_LOG_LEVEL": self.log_level,
            # this checkout's app, even when the .venv is another checkout's (an A/B of two
            # worktrees sharing one editable install would otherwise run one app twice)
            "PYTHONPATH": str(REPO),
        }
        if self.database == "pg":
            env["POSTROOM_DATABASE_URL"] = PG_URL
        self.env = env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def prepare(self, template: Postroom | None = None) -> None:
        """A fresh database; with `template`, a copy of that stopped deployment's database."""
        if template is not None:
            self.env["POSTROOM_SECRET_KEYS"] = template.env["POSTROOM_SECRET_KEYS"]
            if self.database == "sqlite":
                shutil.copytree(
                    template.workdir / "data", self.workdir / "data", dirs_exist_ok=True
                )
        if self.database == "pg":
            await pg_reset(PG_TEMPLATE if template is not None else None)

    async def start_api(self, *, dispatcher: bool) -> subprocess.Popen[bytes]:
        from harness import free_port

        self.port = free_port()
        argv = [str(VENV_BIN / "postroom"), "serve", "--port", str(self.port)]
        if not dispatcher:
            argv.append("--no-dispatcher")
        self.api = spawn(argv, log=self.workdir / "api.log", env=self.env, cwd=self.workdir)
        await wait_port(self.port, self.api, within=60)
        return self.api

    def stop_api(self) -> None:
        if self.api is not None:
            stop(self.api)
            self.api = None

    def start_workers(self, count: int) -> list[subprocess.Popen[bytes]]:
        env = self.env | {"POSTROOM_MIGRATE_ON_START": "false"}
        for _ in range(count):
            log = self.workdir / f"worker-{len(self.workers)}.log"
            argv = [str(VENV_BIN / "postroom"), "worker"]
            self.workers.append(spawn(argv, log=log, env=env, cwd=self.workdir))
        return self.workers

    def stop(self, *, keep_data: bool = False) -> None:
        for proc in self.workers:
            stop(proc)
        self.workers.clear()
        self.stop_api()
        if not keep_data:
            shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def alive(self) -> subprocess.Popen[bytes] | None:
        """A process of this deployment that exited (to fail fast), else None."""
        for proc in [p for p in (self.api, *self.workers) if p is not None]:
            if proc.poll() is not None:
                return proc
        return None

    async def queue_state(self) -> dict[str, Any]:
        """Messages per status, and a few that are not sent (why a run did not finish)."""
        counts = "SELECT status, count(*) FROM messages GROUP BY status"
        stuck = (
            "SELECT id, status, attempts, last_error, next_attempt_at, lease_until "
            "FROM messages WHERE status <> 'sent' ORDER BY created_at LIMIT 5"
        )
        if self.database == "pg":
            import asyncpg

            conn = await asyncpg.connect(PG_URL.replace("+asyncpg", ""), timeout=10)
            try:
                by_status = {r[0]: r[1] for r in await conn.fetch(counts)}
                rows = [dict(r) for r in await conn.fetch(stuck)]
            finally:
                await conn.close()
        else:

            def read() -> tuple[dict[str, int], list[dict[str, Any]]]:
                path = self.workdir / "data" / "postroom.db"
                with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                    conn.row_factory = sqlite3.Row
                    found = {r[0]: r[1] for r in conn.execute(counts)}
                    return found, [dict(r) for r in conn.execute(stuck)]

            by_status, rows = await asyncio.to_thread(read)
        return {"by_status": by_status, "not_sent": rows}

    def cpu(self) -> float:
        """CPU seconds used so far by this deployment's processes (API and workers)."""
        return cpu_seconds(*(p.pid for p in (self.api, *self.workers) if p is not None))

    def peak_rss_kib(self) -> dict[str, int]:
        return rss_kib(self.api.pid) if self.api is not None else {}

    def client(self, user: str, password: str, concurrency: int) -> httpx.AsyncClient:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers={"authorization": f"Basic {token}", "content-type": "application/json"},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=httpx.Timeout(120.0),
        )

    def sender(self, concurrency: int = 32) -> RawClient:
        """The load generator's client (not httpx: see bench/rawhttp.py)."""
        token = base64.b64encode(f"{SENDER}:{SENDER_PASSWORD}".encode()).decode()
        headers = {"authorization": f"Basic {token}", "content-type": "application/json"}
        return RawClient("127.0.0.1", self.port, headers, concurrency)

    async def configure(
        self,
        *,
        sink_port: int,
        connections: int,
        max_recipients: int = 50,
        max_messages: int = 100_000,
    ) -> None:
        """The default profile (pooled SMTP to the sink) and the sender user."""
        async with self.client("admin", ADMIN_PASSWORD, 2) as admin:
            profile = {
                "name": "bench",
                "type": "smtp",
                "isDefault": True,
                "senderEmail": "bench@example.com",
                "senderName": "Bench",
                "maxRecipientsPerMessage": max_recipients,
                "settings": {
                    "host": "127.0.0.1",
                    "port": sink_port,
                    "ignoreTLS": True,
                    "pool": True,
                    "maxConnections": connections,
                    "maxMessages": max_messages,
                    "name": "postroom-bench",
                },
            }
            answer = await admin.post("/api/v1/servers", json=profile)
            _check(answer, 201)
            user = {"name": SENDER, "role": "sender", "password": SENDER_PASSWORD}
            answer = await admin.post("/api/v1/users", json=user)
            _check(answer, 201)

    async def suppress(self, count: int) -> float:
        """Put `count` addresses on the suppression list (none a bench message goes to), through
        the CSV import; returns the seconds the import took."""
        rows = "".join(f"suppressed{i}@example.net\r\n" for i in range(count))
        async with self.client("admin", ADMIN_PASSWORD, 1) as admin:
            began = time.monotonic()
            answer = await admin.post(
                "/api/v1/suppressions/import",
                content=f"address\r\n{rows}".encode(),
                headers={"content-type": "text/csv"},
            )
            _check(answer, 200)
            return time.monotonic() - began


def _check(answer: httpx.Response, status: int) -> None:
    if answer.status_code != status:
        raise RuntimeError(
            f"{answer.request.method} {answer.request.url} answered {answer.status_code}: "
            f"{answer.text[:500]}"
        )


@dataclass
class Load:
    """What a batch of POSTs did."""

    ok: int = 0
    errors: int = 0
    statuses: Counter[int | str] = field(default_factory=Counter)
    first_error: str | None = None
    started: float = 0.0
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    ids: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return self.finished - self.started

    def note(self, status: int, text: str) -> None:
        self.statuses[{-1: "shed", -2: "unanswered"}.get(status, status)] += 1
        if status == 202:
            self.ok += 1
        else:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{status}: {text[:300]}"

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "first_error": self.first_error,
            "elapsed": self.elapsed,
            "client_cpu": self.cpu,
            **percentiles(self.latencies),
        }


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1000,
    }


async def post_closed(
    client: RawClient,
    bodies: Iterable[bytes],
    concurrency: int,
    *,
    on_first: Callable[[float], None] | None = None,
    keep_ids: bool = False,
) -> Load:
    """POST every body with `concurrency` clients, each posting its next as soon as one is done."""
    load = Load()
    queue = iter(bodies)
    cpu = time.process_time()

    async def one_client() -> None:
        for body in queue:
            began = time.monotonic()
            try:
                answer = await client.post("/api/v1/messages", content=body)
            except httpx.HTTPError as err:
                load.note(0, repr(err))
                continue
            load.latencies.append(time.monotonic() - began)
            load.note(answer.status_code, answer.text)
            if keep_ids and answer.status_code == 202:
                load.ids.append(answer.json()["id"])

    load.started = time.monotonic()
    if on_first is not None:
        on_first(load.started)
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    load.finished = time.monotonic()
    load.cpu = time.process_time() - cpu
    return load


async def post_open(
    client: RawClient,
    rate: float,
    duration: float,
    body: Callable[[int], bytes],
    *,
    grace: float = 60.0,
    max_outstanding: int = 1024,
) -> Load:
    """POST at a fixed rate whatever the answers do (open loop); a latency counts from the time
    the request was due, so a stall shows in the percentiles (no coordinated omission).

    Bounded: a request due while `max_outstanding` are unanswered is not sent (status `shed`),
    and requests still unanswered `grace` seconds after the last one was due are abandoned
    (status `unanswered`, their latency counted up to then: a lower bound).
    """
    load = Load()
    count = int(rate * duration)
    cpu = time.process_time()
    pending: dict[asyncio.Task[None], float] = {}

    async def one(i: int, due: float) -> None:
        try:
            answer = await client.post("/api/v1/messages", content=body(i))
        except httpx.HTTPError as err:
            load.note(0, repr(err))
            return
        load.latencies.append(time.monotonic() - due)
        load.note(answer.status_code, answer.text)

    load.started = time.monotonic()
    for i in range(count):
        due = load.started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_outstanding:
            load.note(-1, "shed: too many requests unanswered")
            continue
        task = asyncio.create_task(one(i, due))
        pending[task] = due
        task.add_done_callback(lambda done: pending.pop(done, None))
    if pending:
        await asyncio.wait(list(pending), timeout=grace)
    now = time.monotonic()
    for task, due in list(pending.items()):
        task.cancel()
        load.latencies.append(now - due)
        load.note(-2, "unanswered within the grace period")
    load.finished = now
    load.cpu = time.process_time() - cpu
    return load


async def message_record(client: RawClient, message_id: str) -> dict[str, Any]:
    answer = await client.get(f"/api/v1/messages/{message_id}")
    if answer.status_code != 200:
        raise RuntimeError(f"GET message {message_id} answered {answer.status_code}: {answer.text}")
    data: dict[str, Any] = answer.json()
    return data
