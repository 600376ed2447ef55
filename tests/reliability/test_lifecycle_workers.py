"""Cancel and sendAt with two real `postroom worker` processes sharing the outbox (PostgreSQL in
its pass, SQLite in the other), an API process (`postroom serve --no-dispatcher`) and an SMTP sink:
a cancelled message is never sent, and a scheduled one is not sent before its time. The workers
also run the retention purge."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.delivery.models import Attempt, Heartbeat, Message
from tests.conftest import PG_URL
from tests.reliability import crash
from tests.reliability.conftest import Report
from tests.smtpd import SmtpServer

pytestmark = pytest.mark.processes

WORKERS = 2
WORKER_SETTINGS = {
    # small claims, so that many messages are still queued while others are being sent
    "migrate_on_start": "false",
    "dispatcher_concurrency": 4,
    "dispatcher_batch": 2,
    "poll_interval": 0.1,
    "purge_interval": 0.5,
}


def post(client: httpx.Client, n: int, **body: Any) -> dict[str, Any]:
    body = {"to": [f"u{n}@example.com"], "subject": f"#{n}", "text": "t", **body}
    response = client.post("/api/v1/messages", json=body)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def batch(client: httpx.Client, numbers: range, **fields: Any) -> list[dict[str, Any]]:
    """Many messages in one request (fast on a busy machine, where the scheduled time is near)."""
    items = [
        {"to": [f"u{n}@example.com"], "subject": f"#{n}", "text": "t", **fields} for n in numbers
    ]
    response = client.post("/api/v1/messages/batch", json={"messages": items})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert {r["status"] for r in results} == {202}, results
    return results


def write(db: crash.Db, statement: Any) -> None:
    async def go() -> None:
        async with db.engine.begin() as conn:
            await conn.execute(statement)

    db.loop.run(go())


def run(tmp_path: Path, name: str, sink: SmtpServer, scenario: Any) -> tuple[Any, list[str]]:
    """Start the API on a fresh database, play `scenario(api_url, db, start_workers)`, and
    return its result and the processes' logs."""
    loop = crash.Loop()
    try:
        with crash.place_for(name, tmp_path, PG_URL) as place:
            crash.prepare(loop, place, sink, 0, pool=True, maxConnections=2)
            db = crash.Db(loop, place)
            api = crash.Service(place, "api", dispatcher=False, migrate_on_start="false")
            api.start()
            env = place.env(**WORKER_SETTINGS)
            workers: list[crash.Process] = []

            def start() -> None:
                workers.extend(
                    crash.Process(place, f"{name}{n}", ["worker"], env) for n in range(WORKERS)
                )

            try:
                result = scenario(api.url, db, start)
            finally:
                for worker in workers:
                    worker.stop()
                api.stop()
                db.close()
            logs = [w.output() for w in workers]
            assert api.process is not None
            logs.append(api.process.output())
    finally:
        crash.cleanup()
        loop.close()
    return result, logs


def test_a_cancelled_message_is_never_sent(tmp_path: Path, report: Report) -> None:
    count = 300
    sink = SmtpServer(delays={"DATA_END": 0.05}).start()

    def scenario(
        url: str, db: crash.Db, start: Callable[[], None]
    ) -> tuple[dict[str, int], list[str], list[Any]]:
        answers: dict[str, int] = {}
        with httpx.Client(base_url=url, auth=crash.ADMIN, timeout=60) as client:
            ids = [post(client, n)["id"] for n in range(count)]
        order = random.Random(7).sample(ids, len(ids))
        start()
        crash.wait_until(lambda: crash.delivered(sink, 1), 60, "the workers to start sending")

        def cancel(part: list[str]) -> None:
            with httpx.Client(base_url=url, auth=crash.ADMIN, timeout=60) as client:
                for message_id in part:
                    response = client.post(f"/api/v1/messages/{message_id}/cancel")
                    assert response.status_code in (200, 409), response.text
                    answers[message_id] = response.status_code

        threads = [threading.Thread(target=cancel, args=(order[n::3],)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        crash.wait_until(
            lambda: not (set(db.statuses()) & {"queued", "sending"}), 120, "the outbox to drain"
        )
        return answers, ids, db.rows(select(Message.id, Message.status, Message.message_id))

    try:
        (answers, ids, rows), logs = run(tmp_path, "cancel", sink, scenario)
    finally:
        sink.stop()
    statuses = {message_id: status for message_id, status, _ in rows}
    message_ids = {message_id: header for message_id, _, header in rows}
    copies = crash.message_ids(sink)
    cancelled = [i for i in ids if answers[i] == 200]
    refused = [i for i in ids if answers[i] == 409]
    assert len(cancelled) + len(refused) == count
    for message_id in cancelled:
        assert statuses[message_id] == "cancelled"
        assert copies[message_ids[message_id]] == 0, "a cancelled message was sent"
    for message_id in refused:
        assert statuses[message_id] == "sent"
        assert copies[message_ids[message_id]] == 1
    assert sum(copies.values()) == len(refused)
    assert cancelled, "no cancel came in time: the race was not played"
    assert refused, "every cancel came before a claim: the race was not played"
    assert "Traceback" not in "".join(logs)
    report(
        19,
        f"{WORKERS} workers, {count} messages cancelled while draining: {len(cancelled)} "
        f"cancelled (0 sent), {len(refused)} answered 409 being sent or sent (each sent once)",
    )


def test_scheduled_mail_waits_for_its_time_and_the_workers_purge(
    tmp_path: Path, report: Report
) -> None:
    sink = SmtpServer().start()
    lead = 15.0

    def scenario(url: str, db: crash.Db, start: Callable[[], None]) -> dict[str, Any]:
        start()
        crash.wait_until(
            lambda: len(db.rows(select(Heartbeat.id).where(Heartbeat.loop == "worker"))) == 2,
            60,
            "the workers to start",
        )
        at = datetime.now(UTC) + timedelta(seconds=lead)
        with httpx.Client(base_url=url, auth=crash.ADMIN, timeout=60) as client:
            dropped = batch(client, range(10), sendAt=at.isoformat())
            for answer in dropped:
                response = client.post(f"/api/v1/messages/{answer['id']}/cancel")
                assert response.status_code == 200, response.text
            scheduled = batch(client, range(10, 40), sendAt=at.isoformat())
            listed = client.get("/api/v1/messages", params={"status": "scheduled", "limit": 100})
            assert len(listed.json()["items"]) == 30
            now = batch(client, range(100, 110))
            old = post(client, 200)
        posted = datetime.now(UTC)
        crash.wait_until(lambda: crash.delivered(sink, len(now) + 1), 60, "the unscheduled ones")
        time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds() - 0.3))
        early = set(crash.message_ids(sink)) & {a["messageId"] for a in [*dropped, *scheduled]}
        looked = datetime.now(UTC)
        # the purge in the workers: a finished record 500 days old goes
        write(
            db,
            update(Message)
            .where(Message.id == old["id"])
            .values(created_at=datetime.now(UTC) - timedelta(days=500)),
        )
        crash.wait_until(
            lambda: not db.rows(select(Message.id).where(Message.id == old["id"])),
            30,
            "the purge",
        )
        purges = db.rows(select(Heartbeat.id).where(Heartbeat.loop == "purge"))
        crash.wait_until(
            lambda: crash.delivered(sink, len(now) + 1 + 30), lead + 30, "the scheduled messages"
        )
        time.sleep(1.0)
        return {
            "at": at,
            "posted": posted,
            "looked": looked,
            "early": early,
            "scheduled": scheduled,
            "dropped": {a["messageId"] for a in dropped},
            "purges": len(purges),
            "attempts": db.rows(
                select(Message.id, Message.send_at, Attempt.started_at)
                .join(Attempt, Attempt.message_pk == Message.id)
                .where(Message.send_at.is_not(None))
            ),
        }

    try:
        found, logs = run(tmp_path, "schedule", sink, scenario)
    finally:
        sink.stop()
    copies = crash.message_ids(sink)
    assert found["early"] == set(), "a scheduled message was sent before its time"
    assert found["looked"] < found["at"], (
        f"the sink was looked at only after the messages' time (posting took until "
        f"{found['posted']}, for {found['at']}): the machine is too busy for this test"
    )
    assert len(found["attempts"]) == 30
    for _, send_at, started_at in found["attempts"]:
        assert started_at >= send_at
    latest = max(started_at for _, _, started_at in found["attempts"])
    for answer in found["scheduled"]:
        assert copies[answer["messageId"]] == 1
    for header in found["dropped"]:
        assert copies[header] == 0
    assert found["purges"] == WORKERS
    assert "Traceback" not in "".join(logs)
    report(
        19,
        f"{WORKERS} workers, 30 messages scheduled {lead:g} s ahead (10 more cancelled; posting "
        f"took {(found['posted'] - found['at']).total_seconds() + lead:.1f} s): none "
        f"sent early, all sent within {(latest - found['at']).total_seconds():.1f} s of their "
        f"time, the cancelled never; a 500-day-old record purged by a worker's purge loop",
    )
