"""Issue 17: a profile's rate limit holds across workers. Four real `postroom worker` processes on
a PostgreSQL database drain a backlog through a profile limited to 20 messages a second; the SMTP
sink measures 20 a second, plus or minus 10 %, over 30 seconds."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app.db import transaction, utcnow
from app.delivery.models import Heartbeat, Message
from app.servers import service as servers
from app.wiring import open_core
from tests.conftest import PG_URL
from tests.reliability import crash
from tests.smtpd import SmtpServer

RATE, WORKERS, MEASURED = 20, 4, 30.0
WARM_UP = 2.0
"""Seconds from the first message at the sink to the start of the measure: the workers' start
and the bucket's first, full window are not the steady rate."""


def claimed(log: str) -> int:
    """Messages a worker claimed, from its DEBUG lines."""
    return sum(
        int(line.split("claim transaction: ")[1].split()[0])
        for line in log.splitlines()
        if "claim transaction: " in line
    )


@pytest.mark.processes
@pytest.mark.skipif(PG_URL is None, reason="needs PostgreSQL: set POSTROOM_TEST_DATABASE_URL")
def test_four_workers_send_at_the_profile_s_rate(tmp_path: Path) -> None:
    count = int(RATE * (WARM_UP + MEASURED + 5))
    loop = crash.Loop()
    sink = SmtpServer().start()
    try:
        with crash.place_for("quota", tmp_path, PG_URL) as place:
            crash.prepare(loop, place, sink, count, pool=True, maxConnections=4)

            async def due_at(when: datetime, **patch: object) -> None:
                """Every queued message due at `when`; and the sink profile patched."""
                async with (
                    open_core(place.settings) as runtime,
                    transaction(runtime.sessions) as session,
                ):
                    if patch:
                        await servers.patch_profile(session, runtime.profiles, "sink", patch, None)
                    await session.execute(update(Message).values(next_attempt_at=when))

            # The workers start with nothing due (four processes starting at once on a busy
            # machine take a while), so the measure is of four workers, not of the first one.
            loop.run(due_at(utcnow() + timedelta(hours=1), rateLimit={"perSecond": RATE}))
            env = place.env(migrate_on_start="false", log_level="DEBUG")
            processes = [
                crash.Process(place, f"worker{n}", ["worker"], env) for n in range(WORKERS)
            ]
            db = crash.Db(loop, place)
            try:
                alive = select(func.count()).where(Heartbeat.loop == "worker")
                crash.wait_until(lambda: db.rows(alive)[0][0] == WORKERS, 120, "the workers")
                loop.run(due_at(utcnow()))
                crash.wait_until(lambda: bool(sink.transactions), 30, "the first message")
                start = sink.transactions[0].received_at + WARM_UP
                time.sleep(max(start + MEASURED - time.monotonic(), 0) + 0.5)
                times = [t.received_at for t in sink.transactions]
            finally:
                for process in processes:
                    process.stop()
                db.close()
            logs = [process.output() for process in processes]
            copies = crash.message_ids(sink)
    finally:
        crash.cleanup()
        sink.stop()
        loop.close()
    measured = [t for t in times if start <= t < start + MEASURED]
    rate = len(measured) / MEASURED
    busiest_second = max(sum(1 for u in measured if t <= u < t + 1) for t in measured)
    shares = [claimed(log) for log in logs]
    measure = (
        f"{WORKERS} workers, perSecond {RATE}: {rate:.2f} a second at the sink over "
        f"{MEASURED:g} s ({len(measured)} messages), at most {busiest_second} in one second; "
        f"claimed per worker {shares}"
    )
    logging.getLogger(__name__).warning("%s", measure)  # shown with -rP
    assert RATE * 0.9 <= rate <= RATE * 1.1, measure
    assert sum(1 for share in shares if share) >= 2, "several workers took part"
    assert all(n == 1 for n in copies.values()), "no message sent twice"
    assert "Traceback" not in "".join(logs)
