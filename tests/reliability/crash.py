"""Crash tests: kill -9 and SIGSTOP real Postroom processes, then reconcile against a sink.

    python -m tests.reliability.crash [--quick] [--only ack,dispatch,stop] [--pg ADMIN_URL]

- check 2, `ack`: bursts of sequential POST /api/v1/messages to `postroom serve`, kill -9 at a
  random instant; after a restart every id answered 2xx is in the outbox (lost = 0 per trial).
- check 3, `dispatch`: N accepted messages dispatched by `postroom serve` to an SMTP sink, kill -9
  at random moments and restart; after the drain delivered + failed = N, 0 rows left in
  `sending`, and the duplicates at the sink (same Message-ID) are at most the number of messages
  in flight (`sending`) at the kills.
- check 18, `stop`: SIGSTOP a `postroom worker` mid-send, past its lease (5 s); another worker
  sweeps and delivers; after SIGCONT the stale worker's finish updates 0 rows; the message is
  sent, with at most 2 copies at the sink.

Full sizes by default (20 trials of 2,000 POSTs; 10,000 messages and 3 kills); --quick is the
short form the test suite runs (tests/reliability/test_crash.py). SQLite in a temporary data dir
by default; --pg postgresql+asyncpg://user@host/db runs each scenario in a scratch database created
next to that one (and dropped after). Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.audit.service import SYSTEM
from app.config import Settings
from app.db import transaction, utcnow
from app.delivery.models import Attempt, Message
from app.identity import Principal
from app.messages import service as messages
from app.messages.schemas import MessageIn
from app.messages.service import Caller
from app.servers import service as servers
from app.wiring import open_core
from tests.smtpd import SmtpServer

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin", "crash-admin-password")
T = TypeVar("T")
MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the script's output is its report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Loop:
    """An event loop in a thread, for the driver's database reads and setup."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Place:
    """Where one scenario's service keeps its data."""

    data_dir: Path
    database_url: str | None = None

    @property
    def settings(self) -> Settings:
        return Settings(
            data_dir=self.data_dir,
            database_url=self.database_url,
            admin_password=ADMIN[1],
            dispatcher=False,
            _env_file=None,
        )

    def write_locked(self) -> bool:
        """Whether a writer would wait: on SQLite, some process holds the database's write lock
        (PostgreSQL locks rows, so a frozen transaction stops no other worker)."""
        if self.database_url:
            return False
        db = sqlite3.connect(self.data_dir / "postroom.db", timeout=0.2, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        finally:
            db.close()
        return False

    def env(self, **extra: Any) -> dict[str, str]:
        env = {
            "POSTROOM_DATA_DIR": str(self.data_dir),
            "POSTROOM_DATABASE_URL": self.database_url or "",
            "POSTROOM_ADMIN_PASSWORD": ADMIN[1],
            "POSTROOM_LOG_LEVEL": "WARNING",
            "POSTROOM_POLL_INTERVAL": "0.2",
        }
        env.update({f"POSTROOM_{key.upper()}": str(value) for key, value in extra.items()})
        return env


class Process:
    """One `postroom` process, its output in a log file."""

    def __init__(self, place: Place, name: str, args: list[str], env: dict[str, str]) -> None:
        self.log = place.data_dir.parent / f"{name}.log"
        code = "import sys\nfrom app.cli import main\nsys.argv[0] = 'postroom'\nmain()"
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", code, *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        PROCESSES.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


PROCESSES: list[Process] = []


def cleanup() -> None:
    """Kill what this script started and left running (by pid)."""
    for process in PROCESSES:
        if process.popen.poll() is None:
            process.signal(signal.SIGCONT)
            process.kill()
    PROCESSES.clear()


class Service:
    """`postroom serve` on a free port."""

    def __init__(self, place: Place, name: str, dispatcher: bool, **settings: Any) -> None:
        self.place = place
        self.name = name
        self.dispatcher = dispatcher
        self.settings = settings
        self.port = free_port()
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, within: float = 90) -> None:
        args = ["serve", "--port", str(self.port)]
        if not self.dispatcher:
            args.append("--no-dispatcher")
        self.process = Process(self.place, self.name, args, self.place.env(**self.settings))
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.popen.poll() is not None:
                raise RuntimeError(f"postroom serve exited: {self.process.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("postroom serve did not become ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class Db:
    """Reads the scenario's database from the driver (no BEGIN IMMEDIATE: reads take no lock)."""

    def __init__(self, loop: Loop, place: Place) -> None:
        self.loop = loop
        self.engine: AsyncEngine = create_async_engine(place.settings.url)

    def statuses(self) -> Counter[str]:
        async def read() -> Counter[str]:
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    select(Message.status, func.count()).group_by(Message.status)
                )
                return Counter({status: count for status, count in rows})

        return self.loop.run(read())

    def ids(self) -> set[str]:
        async def read() -> set[str]:
            async with self.engine.connect() as conn:
                return set((await conn.scalars(select(Message.id))).all())

        return self.loop.run(read())

    def rows(self, statement: Any) -> list[Any]:
        async def read() -> list[Any]:
            async with self.engine.connect() as conn:
                return list((await conn.execute(statement)).all())

        return self.loop.run(read())

    def close(self) -> None:
        self.loop.run(self.engine.dispose())


@contextmanager
def place_for(name: str, workdir: Path, pg_admin: str | None) -> Iterator[Place]:
    """A data dir (and, with --pg, a scratch database) for one scenario."""
    data_dir = workdir / name / "data"
    data_dir.mkdir(parents=True)
    if pg_admin is None:
        yield Place(data_dir)
        return
    database = f"postroom_crash_{name}_{uuid.uuid4().hex[:8]}"
    raw = pg_admin.replace("postgresql+asyncpg", "postgresql")

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(raw)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{database}"'))
    try:
        yield Place(data_dir, pg_admin.rsplit("/", 1)[0] + f"/{database}")
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def message_ids(server: SmtpServer) -> Counter[str]:
    """How many copies of each Message-ID the sink holds."""
    found: Counter[str] = Counter()
    for transaction_ in server.transactions:
        match = MESSAGE_ID.search(transaction_.data)
        if match:
            found[match.group(1).decode()] += 1
    return found


def none_sending(db: Db, ids: set[str]) -> bool:
    return not db.rows(select(Message.id).where(Message.id.in_(ids), Message.status == "sending"))


def delivered(sink: SmtpServer, at_least: int) -> bool:
    return len(message_ids(sink)) >= at_least


def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


# --- check 2 ----------------------------------------------------------------------------------


@dataclass
class AckResult:
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(t["lost"] for t in self.trials)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and all(t["acknowledged"] > 0 for t in self.trials)


def crash_at_acknowledgement(
    place: Place, loop: Loop, rng: random.Random, trials: int, posts: int
) -> AckResult:
    result = AckResult()
    service = Service(place, "ack", dispatcher=False)
    service.start()
    db = Db(loop, place)
    pending: list[str] = []
    try:
        for trial in range(1, trials + 1):
            if pending:
                stored = db.ids()
                result.trials[-1]["lost"] = len(set(pending) - stored)
                result.trials[-1]["stored"] = len(stored)
            kill_after = rng.randint(1, posts - 1)
            acked: list[str] = []
            killer: threading.Timer | None = None
            with httpx.Client(base_url=service.url, auth=ADMIN, timeout=10) as client:
                for n in range(posts):
                    body = {
                        "from": "crash@example.com",
                        "to": [f"u{trial}-{n}@example.com"],
                        "subject": f"trial {trial} #{n}",
                        "text": "crash test",
                    }
                    try:
                        response = client.post("/api/v1/messages", json=body)
                    except httpx.TransportError:
                        break
                    if response.status_code == 202:
                        acked.append(response.json()["id"])
                    if len(acked) == kill_after and killer is None:
                        killer = threading.Timer(rng.uniform(0, 0.01), service.kill)
                        killer.start()
            if killer is not None:
                killer.join()
            service.kill()
            result.trials.append({"acknowledged": len(acked), "lost": -1, "stored": -1})
            pending = acked
            service.start()  # the restart the next trial (or the final check) runs against
        stored = db.ids()
        result.trials[-1]["lost"] = len(set(pending) - stored)
        result.trials[-1]["stored"] = len(stored)
    finally:
        service.stop()
        db.close()
    for n, outcome in enumerate(result.trials, start=1):
        say(
            f"check 2: trial {n}/{trials}: {outcome['acknowledged']} acknowledged before the kill, "
            f"{outcome['lost']} lost ({outcome['stored']} stored in all)"
        )
    failing = sum(1 for t in result.trials if t["lost"])
    say(f"check 2: lost = 0 in {trials - failing}/{trials} trials")
    return result


# --- setup shared by checks 3 and 18 ------------------------------------------------------------


def prepare(loop: Loop, place: Place, sink: SmtpServer, count: int, **profile: Any) -> list[str]:
    """Migrate, add the sink as the default SMTP profile and accept `count` messages, through
    the service's own code (what POST /api/v1/messages runs); their ids."""

    async def work() -> list[str]:
        ids: list[str] = []
        async with open_core(place.settings) as runtime:
            async with transaction(runtime.sessions) as session:
                body = servers.PROFILE_BODY.validate_python(
                    {
                        "name": "sink",
                        "type": "smtp",
                        "isDefault": True,
                        "senderEmail": "crash@example.com",
                        "settings": {
                            "host": sink.host,
                            "port": sink.port,
                            "ignoreTLS": True,
                            **profile,
                        },
                    }
                )
                await servers.create_profile(session, runtime.profiles, body, SYSTEM)
            caller = Caller(Principal("crash", "admin"), "127.0.0.1")
            for start in range(0, count, 500):
                async with transaction(runtime.sessions) as session:
                    for n in range(start, min(start + 500, count)):
                        message = MessageIn.model_validate(
                            {"to": [f"u{n}@example.com"], "subject": f"#{n}", "text": "crash"}
                        )
                        taken = await messages.enqueue(session, runtime.settings, caller, message)
                        ids.append(taken.answer.id)
        return ids

    return loop.run(work())


# --- check 3 ----------------------------------------------------------------------------------


@dataclass
class DispatchResult:
    accepted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    in_flight: list[int] = field(default_factory=list)
    duplicates: int = 0
    lost: int = 0
    sending_cleared_after: float = 0.0
    """From the last kill until no row it left in `sending` was still there."""
    restart: float = 0.0
    lease: float = 0.0
    concurrency: int = 0

    @property
    def sweep(self) -> float:
        """The dispatcher's sweep interval for this lease."""
        return min(self.lease / 4, 30.0)

    @property
    def ok(self) -> bool:
        done = self.statuses.get("sent", 0) + self.statuses.get("failed", 0)
        return (
            done == self.accepted
            and self.statuses.get("sending", 0) == 0
            and self.lost == 0
            and self.duplicates <= sum(self.in_flight) <= len(self.in_flight) * self.concurrency
            and self.sending_cleared_after <= self.restart + self.lease + self.sweep + 2
        )


def crash_during_dispatch(
    place: Place, loop: Loop, rng: random.Random, count: int, kills: int
) -> DispatchResult:
    lease, concurrency = 4.0, 16
    result = DispatchResult(lease=lease, concurrency=concurrency)
    sink = SmtpServer().start()
    db = Db(loop, place)
    service = Service(
        place,
        "dispatch",
        dispatcher=True,
        lease_seconds=lease,
        attempt_timeout=2,
        dispatcher_concurrency=concurrency,
    )
    try:
        ids = prepare(loop, place, sink, count, pool=True, maxConnections=4)
        result.accepted = len(ids)
        marks = sorted(rng.uniform(0.15, 0.85) for _ in range(kills))
        started = utcnow()
        service.start()
        for mark in marks:
            target = int(mark * count)
            wait_until(partial(delivered, sink, target), 120 + count / 20, "the sink")
            service.kill()
            # claimed by the process just killed: a lease set after it started (rows an earlier
            # kill left in `sending` have older leases and were counted then)
            [(in_flight,)] = db.rows(
                select(func.count()).where(
                    Message.status == "sending",
                    Message.lease_until >= started + timedelta(seconds=lease),
                )
            )
            result.in_flight.append(in_flight)
            killed = time.monotonic()
            stranded = {
                row[0] for row in db.rows(select(Message.id).where(Message.status == "sending"))
            }
            say(
                f"check 3: kill -9 at {len(message_ids(sink))}/{count} delivered: "
                f"{in_flight} in flight (claimed by the killed process, `sending`)"
            )
            started = utcnow()
            service.start()
            result.restart = time.monotonic() - killed
        # the rows the last kill left in `sending`: back in the queue within a lease and a sweep
        wait_until(partial(none_sending, db, stranded), 30 + 2 * lease, "the stranded rows")
        result.sending_cleared_after = time.monotonic() - killed
        wait_until(
            lambda: not (set(db.statuses()) & {"queued", "sending"}),
            120 + count / 20,
            "the outbox to drain",
        )
        result.statuses = dict(db.statuses())
        sent_ids = {
            row[0] for row in db.rows(select(Message.message_id).where(Message.status == "sent"))
        }
        copies = message_ids(sink)
        result.lost = len(sent_ids - set(copies))
        result.duplicates = sum(n - 1 for n in copies.values())
    finally:
        service.stop()
        sink.stop()
        db.close()
    say(
        f"check 3: {result.accepted} accepted -> {result.statuses}; duplicates at the sink "
        f"{result.duplicates} <= in flight at the kills {sum(result.in_flight)} "
        f"(bound {kills} x {concurrency}); lost {result.lost}; the rows the last kill left in "
        f"`sending` "
        f"were all back within {result.sending_cleared_after:.1f} s of it (restart "
        f"{result.restart:.1f} s + lease {lease:g} s + sweep {result.sweep:g} s)"
    )
    return result


# --- check 18 ---------------------------------------------------------------------------------


@dataclass
class StopResult:
    status: str = ""
    attempts: int = 0
    attempt_numbers: list[int] = field(default_factory=list)
    copies: int = 0
    stale_dropped: bool = False
    lease: float = 0.0
    redelivered_after: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.status == "sent"
            and self.stale_dropped
            and self.copies <= 2
            and self.attempt_numbers == [self.attempts]
        )


def freeze_outside_a_write(process: Process, place: Place) -> None:
    """SIGSTOP `process` at a moment it holds no SQLite write lock. The worker claims and sweeps
    while it sends, each a transaction of a few ms; frozen inside one, it would hold SQLite's
    single write lock and stop every other writer, which is SQLite's nature, not a stale lease."""
    for tries in range(1, 21):
        process.signal(signal.SIGSTOP)
        if not place.write_locked():
            return
        say(f"check 18: try {tries}: stopped inside a write transaction; continued and retried")
        process.signal(signal.SIGCONT)
        time.sleep(0.02)
    raise RuntimeError("the worker held the write lock at every try")


def stopped_worker(place: Place, loop: Loop) -> StopResult:
    lease = 5.0
    result = StopResult(lease=lease)
    sink = SmtpServer(delays={"DATA": 1.0}).start()
    db = Db(loop, place)
    env = place.env(lease_seconds=lease, attempt_timeout=3, migrate_on_start="false")
    stale = fresh = None
    try:
        [message_pk] = prepare(loop, place, sink, 1)
        stale = Process(place, "worker-stale", ["worker"], env)
        wait_until(
            lambda: any("DATA" in s.verbs for s in sink.sessions), 90, "the first worker's DATA"
        )
        freeze_outside_a_write(stale, place)
        stopped = time.monotonic()
        say(f"check 18: SIGSTOP worker {stale.pid} mid-send (DATA sent, no reply read)")
        fresh = Process(place, "worker-fresh", ["worker"], env)
        wait_until(lambda: db.statuses().get("sent", 0) == 1, 90, "the second worker to deliver")
        result.redelivered_after = time.monotonic() - stopped
        stale.signal(signal.SIGCONT)
        wait_until(lambda: "lost its lease" in stale.output(), 30, "the stale worker's finish")
        result.stale_dropped = True
        time.sleep(0.5)
        [(status, attempts)] = db.rows(
            select(Message.status, Message.attempts).where(Message.id == message_pk)
        )
        result.status, result.attempts = status, attempts
        result.attempt_numbers = [
            row[0]
            for row in db.rows(select(Attempt.number).where(Attempt.message_pk == message_pk))
        ]
        result.copies = sum(message_ids(sink).values())
    finally:
        for process in (stale, fresh):
            if process is not None:
                process.stop()
        sink.stop()
        db.close()
    say(
        f"check 18: lease {lease:g} s; another worker delivered {result.redelivered_after:.1f} s "
        f"after the stop; after SIGCONT the stale finish updated 0 rows "
        f"({result.stale_dropped}); final {result.status}, attempt rows {result.attempt_numbers} "
        f"of {result.attempts}, {result.copies} copies at the sink"
    )
    return result


# --- driver -----------------------------------------------------------------------------------


@dataclass
class Results:
    ack: AckResult | None = None
    dispatch: DispatchResult | None = None
    stop: StopResult | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in (self.ack, self.dispatch, self.stop) if r is not None)


def run(
    *,
    quick: bool,
    workdir: Path,
    only: set[str] | None = None,
    pg_admin: str | None = None,
    seed: int | None = None,
) -> Results:
    rng = random.Random(seed)
    only = only or {"ack", "dispatch", "stop"}
    results = Results()
    loop = Loop()
    try:
        if "ack" in only:
            with place_for("ack", workdir, pg_admin) as place:
                trials, posts = (2, 120) if quick else (20, 2000)
                results.ack = crash_at_acknowledgement(place, loop, rng, trials, posts)
        if "dispatch" in only:
            with place_for("dispatch", workdir, pg_admin) as place:
                count, kills = (300, 2) if quick else (10_000, 3)
                results.dispatch = crash_during_dispatch(place, loop, rng, count, kills)
        if "stop" in only:
            with place_for("stop", workdir, pg_admin) as place:
                results.stop = stopped_worker(place, loop)
    finally:
        cleanup()
        loop.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short form (the test suite's)")
    parser.add_argument("--only", default="ack,dispatch,stop", help="scenarios, comma-separated")
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL: scratch databases next to URL")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    args = parser.parse_args(argv)
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(
            quick=args.quick, workdir=args.workdir, only=only, pg_admin=args.pg, seed=args.seed
        )
    else:
        with tempfile.TemporaryDirectory(prefix="postroom-crash-") as tmp:
            results = run(
                quick=args.quick, workdir=Path(tmp), only=only, pg_admin=args.pg, seed=args.seed
            )
    say("crash tests: " + ("PASS" if results.ok else "FAIL"))
    return 0 if results.ok else 1


if __name__ == "__main__":
    sys.exit(main())
