"""Check 19: concurrent `postroom worker` processes claim with SKIP LOCKED (PostgreSQL) or BEGIN
IMMEDIATE (SQLite): every (id, attempt) is claimed once, nothing is sent twice, the queue drains.

PostgreSQL: 8 workers on 2,000 due rows (10,000 with POSTROOM_RELIABILITY_FULL=1) in a scratch
database next to POSTROOM_TEST_DATABASE_URL; the claim transaction's p99 comes from the workers'
own DEBUG line. SQLite: 4 workers while clients keep posting through `postroom serve`: no
duplicate, and no "database is locked" reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Attempt, Message
from app.wiring import Core
from tests.conftest import PG_URL
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.reliability import crash
from tests.reliability.conftest import FULL, Report
from tests.smtpd import SmtpServer, StartServer


def claim_times(logs: list[str]) -> list[float]:
    found = []
    for log in logs:
        for line in log.splitlines():
            if "claim transaction:" in line:
                found.append(float(line.rsplit(" in ", 1)[1].split(" ms")[0]))
    return found


def reconcile(db: crash.Db, sink: SmtpServer) -> tuple[Counter[str], int, int, int]:
    """(statuses, messages claimed other than exactly once, attempt rows other than number 1,
    duplicates at the sink)."""
    statuses = db.statuses()
    [(not_once,)] = db.rows(select(func.count()).where(Message.attempts != 1))
    per_message = db.rows(
        select(Attempt.message_pk, func.count(), func.max(Attempt.number)).group_by(
            Attempt.message_pk
        )
    )
    odd_attempts = sum(1 for _, count, number in per_message if count != 1 or number != 1)
    odd_attempts += sum(statuses.values()) - len(per_message)
    copies = crash.message_ids(sink)
    duplicates = sum(n - 1 for n in copies.values())
    return statuses, not_once, odd_attempts, duplicates


@pytest.mark.processes
@pytest.mark.skipif(PG_URL is None, reason="needs PostgreSQL: set POSTROOM_TEST_DATABASE_URL")
def test_eight_workers_claim_each_row_once_on_postgresql(tmp_path: Path, report: Report) -> None:
    count, workers = (10_000 if FULL else 2_000), 8
    load_before = os.getloadavg()[0]
    loop = crash.Loop()
    sink = SmtpServer().start()
    try:
        with crash.place_for("claims", tmp_path, PG_URL) as place:
            crash.prepare(loop, place, sink, count, pool=True, maxConnections=4)
            db = crash.Db(loop, place)
            # 8 in flight per worker: 8 x (8 + 1) PostgreSQL connections at most, within the
            # server's default max_connections of 100 (16 would need up to 8 x 15 = 120)
            env = place.env(migrate_on_start="false", log_level="DEBUG", dispatcher_concurrency=8)
            started = time.monotonic()
            processes = [
                crash.Process(place, f"worker{n}", ["worker"], env) for n in range(workers)
            ]
            try:
                crash.wait_until(
                    lambda: db.statuses().get("sent", 0) == count, 60 + count / 20, "the drain"
                )
                drained_in = time.monotonic() - started
            finally:
                for process in processes:
                    process.stop()
            statuses, not_once, odd_attempts, duplicates = reconcile(db, sink)
            db.close()
            logs = [process.output() for process in processes]
    finally:
        crash.cleanup()
        sink.stop()
        loop.close()
    times = claim_times(logs)
    p50 = statistics.median(times)
    p99 = statistics.quantiles(times, n=100)[-1] if len(times) > 1 else times[0]
    busy = sum(1 for log in logs if "claim transaction:" in log)
    assert statuses == {"sent": count}
    assert (not_once, odd_attempts, duplicates) == (0, 0, 0)
    assert len(crash.message_ids(sink)) == count
    assert busy >= 2, "several workers took part"
    assert "Traceback" not in "".join(logs)
    report(
        19,
        f"PostgreSQL, {workers} workers ({busy} claimed), {count} rows drained in "
        f"{drained_in:.1f} s: each claimed once (0 otherwise), 0 duplicates; "
        f"{len(times)} claim transactions, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max "
        f"{max(times):.1f} ms (load average {load_before:.1f} on {os.cpu_count()} CPUs)",
    )
    # The claim time is wall time in a worker's event loop: when 8 workers, PostgreSQL and the
    # sink share fewer cores than that (or the machine is busy with other work), it measures
    # scheduling delay more than the transaction. The anchors' p99 < 100 ms is asserted when
    # every process can have a core; on smaller machines it is reported, and
    # test_no_claim_transaction_spans_a_send shows the structural property (no transaction open
    # during SMTP I/O) anywhere.
    if (os.cpu_count() or 1) >= workers + 2:
        assert p99 < 100


@pytest.mark.processes
@pytest.mark.skipif(PG_URL is not None, reason="the SQLite variant runs in the SQLite pass")
def test_four_workers_and_posting_clients_on_sqlite(tmp_path: Path, report: Report) -> None:
    count, workers, posted = 400, 4, 120
    loop = crash.Loop()
    sink = SmtpServer().start()
    answers: Counter[int] = Counter()
    bodies: list[str] = []
    try:
        with crash.place_for("claims", tmp_path, None) as place:
            crash.prepare(loop, place, sink, count, pool=True, maxConnections=2)
            db = crash.Db(loop, place)
            api = crash.Service(place, "api", dispatcher=False, migrate_on_start="false")
            api.start()
            env = place.env(migrate_on_start="false")
            processes = [
                crash.Process(place, f"worker{n}", ["worker"], env) for n in range(workers)
            ]

            def post(offset: int) -> None:
                with httpx.Client(base_url=api.url, auth=crash.ADMIN, timeout=60) as client:
                    for n in range(offset, posted, 4):
                        body = {"to": [f"p{n}@example.com"], "subject": f"p{n}", "text": "t"}
                        response = client.post("/api/v1/messages", json=body)
                        answers[response.status_code] += 1
                        if response.status_code >= 500:
                            bodies.append(response.text)

            threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            total = count + answers[202]
            try:
                crash.wait_until(
                    lambda: db.statuses().get("sent", 0) == total, 60 + total / 20, "the drain"
                )
            finally:
                for process in [*processes]:
                    process.stop()
                api.stop()
            statuses, not_once, odd_attempts, duplicates = reconcile(db, sink)
            db.close()
            logs = [process.output() for process in processes] + [api.process.output()]  # type: ignore[union-attr]
    finally:
        crash.cleanup()
        sink.stop()
        loop.close()
    locked = sum(log.count("database is locked") for log in logs)
    assert answers == {202: posted}, (answers, bodies[:3])
    assert statuses == {"sent": total}
    assert (not_once, odd_attempts, duplicates, locked) == (0, 0, 0, 0)
    report(
        19,
        f"SQLite, {workers} workers + 4 posting clients: {total} sent, answers {dict(answers)}, "
        f"0 claimed twice, {duplicates} duplicates, {locked} 'database is locked'",
    )


@pytest.mark.anyio
async def test_no_claim_transaction_spans_a_send(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    caplog: pytest.LogCaptureFixture,
    report: Report,
) -> None:
    """Check 19, structurally: with every SMTP transaction taking 1 s, the claim transactions
    stay far shorter: none is open while a transport talks to a server."""
    caplog.set_level(logging.DEBUG, logger="postroom.dispatcher")
    server = smtp_server_factory(delays={"DATA_END": 1.0})
    await add_smtp_profile(admin, server)
    ids = [await send(sender, to=[f"u{i}@example.com"]) for i in range(12)]
    runtime.settings.dispatcher_concurrency = 4
    runtime.settings.dispatcher_batch = 2
    stopping = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stopping))
    try:
        await server.wait_until(lambda: len(server.transactions) == len(ids), within=30)
    finally:
        stopping.set()
        await running
    times = claim_times([caplog.text])
    sends = [a["durationMs"] for i in ids for a in (await record(admin, i))["attemptLog"]]
    assert len(times) >= 4
    assert min(sends) >= 1000
    assert max(times) < min(sends), "a claim open across a send lasts at least as long as it"
    report(
        19,
        f"{len(times)} claim transactions while each send took >= {min(sends):.0f} ms: "
        f"longest claim {max(times):.1f} ms ({runtime.engine.dialect.name})",
    )
