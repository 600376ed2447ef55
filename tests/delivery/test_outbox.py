"""The outbox protocol: leases, fencing, sweeping, and concurrent dispatchers."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select, update

from app.db import transaction
from app.delivery import outbox
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.delivery.outbox import RetryPolicy
from app.wiring import Core
from tests.conftest import PG_URL
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


async def statuses(runtime: Core) -> dict[str, int]:
    async with runtime.sessions() as session:
        rows = await session.execute(select(Message.status, func.count()).group_by(Message.status))
        return {status: count for status, count in rows}


async def test_an_expired_lease_is_swept_back_and_the_stale_finish_is_fenced(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    stale_worker = Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )

    async with transaction(runtime.sessions) as session:
        [stale_claim] = await outbox.claim(session, limit=10, lease=0.0)
    [job] = await stale_worker._load([stale_claim])
    await stale_worker._attempt(job)
    assert len(server.transactions) == 1

    await asyncio.sleep(0.01)
    async with transaction(runtime.sessions) as session:
        assert await outbox.sweep(session) == 1
    fresh = Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )
    await fresh.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert saved["attempts"] == 2

    await stale_worker._finish([job])
    again = await record(sender, message_id)
    assert again["attempts"] == 2
    assert [a["number"] for a in again["attemptLog"]] == [2], "the stale attempt wrote nothing"
    assert len(server.transactions) == 2, "at-least-once: the stale worker's copy is a duplicate"


async def test_a_payload_that_cannot_be_read_does_not_stop_its_batch(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stored message the outbox cannot parse (a hand-edited row: no version writes one) is
    logged and left in `sending` for the sweep; the rest of its batch goes out."""
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    broken = await send(sender, to=["ann@example.com"])
    fine = await send(sender, to=["bob@example.com"])
    async with transaction(runtime.sessions) as session:
        await session.execute(update(Message).where(Message.id == broken).values(payload={}))
    dispatcher = Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )
    await dispatcher.drain()
    assert (await record(sender, fine))["status"] == "sent"
    assert (await record(sender, broken))["status"] == "sending"
    assert [t.rcpt_tos for t in server.transactions] == [["bob@example.com"]]
    assert f"message {broken}: its stored payload cannot be read" in caplog.text


async def test_a_stopped_dispatcher_loses_nothing(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(delays={"DATA_END": 0.01})
    await add_smtp_profile(admin, server)
    ids = [await send(sender, to=[f"user{i}@example.com"]) for i in range(40)]
    runtime.settings.dispatcher_concurrency = runtime.settings.dispatcher_batch = 8

    stopping = asyncio.Event()
    first = Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )
    task = asyncio.create_task(first.run(stopping))
    await server.wait_until(lambda: len(server.transactions) >= 5, within=10)
    stopping.set()
    await task
    done = await statuses(runtime)
    assert done.get("sending", 0) == 0, "a stopped dispatcher finishes what it has in flight"
    assert 5 <= done.get("sent", 0) < 40

    second = Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )
    await second.drain()
    assert await statuses(runtime) == {"sent": 40}
    received = sorted(r for t in server.transactions for r in t.rcpt_tos)
    assert received == sorted(f"user{i}@example.com" for i in range(40))
    assert len(ids) == 40


async def test_concurrent_dispatchers_never_send_a_message_twice(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, settings={"pool": True, "maxConnections": 4})
    total = 60
    for i in range(total):
        await send(sender, to=[f"user{i}@example.com"])
    runtime.settings.dispatcher_batch = 5
    workers = [
        Dispatcher(
            runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
        )
        for _ in range(4)
    ]
    await asyncio.gather(*(worker.drain() for worker in workers))
    assert await statuses(runtime) == {"sent": total}
    received = [r for t in server.transactions for r in t.rcpt_tos]
    assert len(received) == total
    assert len(set(received)) == total


def test_retry_schedule_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(base=60, cap=1800, max_age=86_400)
    for attempt, nominal in [(1, 60), (2, 120), (3, 240), (5, 960), (6, 1800), (12, 1800)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert nominal * 0.75 <= min(delays)
        assert max(delays) <= nominal * 1.25
        assert max(delays) - min(delays) > nominal * 0.1, "jittered"
    assert policy.delay(1, retry_after=500) >= 500


@pytest.mark.skipif(PG_URL is None, reason="needs PostgreSQL: set POSTROOM_TEST_DATABASE_URL")
async def test_skip_locked_claims_are_disjoint_on_postgresql(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    for i in range(50):
        await send(sender, to=[f"user{i}@example.com"], **{"from": "me@example.com"})

    async def claim_some() -> list[str]:
        async with transaction(runtime.sessions) as session:
            claims = await outbox.claim(session, limit=20, lease=60)
            await asyncio.sleep(0.05)
            return [c.id for c in claims]

    batches = await asyncio.gather(*(claim_some() for _ in range(4)))
    claimed = [i for batch in batches for i in batch]
    assert len(claimed) == len(set(claimed)) == 50
