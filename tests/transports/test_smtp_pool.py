"""Pooling: the generic ConnectionPool, and the SMTP transport's pool seen from the server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import TemporaryError
from app.transports.pool import ConnectionPool, PoolClosed
from app.transports.smtp import SmtpTransport
from tests.smtpd import SmtpServer, make_message

pytestmark = pytest.mark.anyio


def build(server: SmtpServer, context: TransportContext, **settings: Any) -> SmtpTransport:
    return smtp.create("test", server.config(**settings), context)


class FakeConnection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.alive = True
        self.closed = False
        self.aborted = False

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        self.closed = True
        self.alive = False

    def abort(self) -> None:
        self.aborted = True
        self.alive = False


class Factory:
    def __init__(self, fail: bool = False) -> None:
        self.made: list[FakeConnection] = []
        self.fail = fail

    async def __call__(self) -> FakeConnection:
        await asyncio.sleep(0)
        if self.fail:
            raise OSError("refused")
        self.made.append(FakeConnection(len(self.made) + 1))
        return self.made[-1]


def pool(factory: Factory, **limits: Any) -> ConnectionPool[FakeConnection]:
    settings = {"max_connections": 2, "max_uses": 3, "idle_timeout": 30.0, **limits}
    return ConnectionPool(factory, **settings)


async def test_pool_limits_connections_and_uses():
    factory = Factory()
    connections = pool(factory)
    busy = 0
    peak = 0

    async def work() -> int:
        nonlocal busy, peak
        async with connections.lease() as connection:
            busy += 1
            peak = max(peak, busy, connections.open_connections)
            await asyncio.sleep(0.01)
            busy -= 1
            return connection.number

    used = await asyncio.gather(*(work() for _ in range(12)))

    assert peak == 2
    assert len(factory.made) == 4
    assert sorted(used.count(n) for n in set(used)) == [3, 3, 3, 3]
    assert connections.open_connections == 0
    assert all(c.closed for c in factory.made)


async def test_pool_reuses_the_most_recent_idle_connection():
    factory = Factory()
    connections = pool(factory)

    for _ in range(2):
        async with connections.lease() as connection:
            assert connection.number == 1

    assert connections.idle_connections == 1
    await connections.aclose()
    assert factory.made[0].closed


async def test_pool_discards_a_connection_whose_work_failed():
    factory = Factory()
    connections = pool(factory)

    with pytest.raises(RuntimeError):
        async with connections.lease():
            raise RuntimeError("boom")

    assert factory.made[0].closed
    assert connections.open_connections == 0


async def test_pool_aborts_on_cancellation():
    factory = Factory()
    connections = pool(factory)
    started = asyncio.Event()

    async def stuck() -> None:
        async with connections.lease():
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(stuck())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert factory.made[0].aborted
    assert connections.open_connections == 0


async def test_pool_skips_dead_idle_connections():
    factory = Factory()
    connections = pool(factory)
    async with connections.lease():
        pass
    factory.made[0].alive = False

    async with connections.lease() as connection:
        assert connection.number == 2

    assert factory.made[0].aborted


async def test_pool_closes_idle_connections():
    factory = Factory()
    connections = pool(factory, idle_timeout=0.05)
    async with connections.lease():
        pass

    await asyncio.sleep(0.2)

    assert factory.made[0].closed
    assert connections.open_connections == 0


async def test_only_connections_idle_for_the_timeout_are_closed():
    factory = Factory()
    connections = pool(factory, idle_timeout=0.2)

    async def hold() -> None:
        async with connections.lease():
            await asyncio.sleep(0.01)

    await asyncio.gather(hold(), hold())  # two connections, both idle from now
    await asyncio.sleep(0.12)
    async with connections.lease() as used:  # the most recent one, idle again from now
        pass
    await asyncio.sleep(0.12)  # the other one's 0.2 s are up, not this one's

    assert [c.closed for c in factory.made if c is not used] == [True]
    assert not used.closed
    assert connections.idle_connections == 1
    await asyncio.sleep(0.15)
    assert used.closed
    assert connections.open_connections == 0


async def test_a_waiter_cancelled_after_its_wake_up_passes_the_turn_on():
    factory = Factory()
    connections = pool(factory, max_connections=1)
    release = asyncio.Event()
    waiting: list[asyncio.Task[int]] = []

    async def take() -> int:
        async with connections.lease() as connection:
            return connection.number

    async def hold() -> None:
        async with connections.lease():
            await release.wait()
        # giving the connection back woke the first waiter; it is cancelled before it runs
        waiting[0].cancel()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiting += [asyncio.create_task(take()), asyncio.create_task(take())]
    await asyncio.sleep(0.01)
    release.set()
    await holder

    assert await asyncio.wait_for(waiting[1], 1.0) == 1
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]


async def test_pool_frees_the_slot_when_connecting_fails():
    factory = Factory(fail=True)
    connections = pool(factory, max_connections=1)

    for _ in range(3):
        with pytest.raises(OSError, match="refused"):
            async with connections.lease():
                pass

    assert connections.open_connections == 0


async def test_a_closed_pool_lends_nothing_and_closes_busy_connections_when_returned():
    factory = Factory()
    connections = pool(factory)

    async with connections.lease() as connection:
        await connections.aclose()
        assert not connection.closed

    assert connection.closed
    with pytest.raises(PoolClosed):
        async with connections.lease():
            pass


async def test_smtp_pool_limits_seen_from_the_server(smtp_server, smtp_context):
    transport = build(smtp_server, smtp_context, pool=True, maxConnections=2, maxMessages=3)

    results = await asyncio.gather(*(transport.send(make_message()) for _ in range(10)))

    assert {r.recipients["rcpt@example.com"].status for r in results} == {"sent"}
    sessions = smtp_server.sessions
    assert smtp_server.max_open_sessions == 2
    assert sum(s.transactions for s in sessions) == 10
    assert max(s.transactions for s in sessions) == 3
    assert 4 <= len(sessions) < 10
    await transport.aclose()
    await smtp_server.wait_until(lambda: smtp_server.open_sessions == 0)
    assert all(s.verbs[-1] == "QUIT" for s in smtp_server.sessions)


async def test_smtp_pool_closes_idle_connections(smtp_server, smtp_context):
    transport = build(smtp_server, smtp_context, pool=True, socketTimeout=200)

    await transport.send(make_message())
    assert smtp_server.open_sessions == 1
    await smtp_server.wait_until(lambda: smtp_server.open_sessions == 0)
    await transport.send(make_message())

    assert smtp_server.sessions[0].verbs[-1] == "QUIT"
    assert len(smtp_server.sessions) == 2
    await transport.aclose()


async def test_smtp_pool_discards_a_connection_that_failed(smtp_server_factory, smtp_context):
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try again"})
    transport = build(server, smtp_context, pool=True)

    with pytest.raises(TemporaryError):
        await transport.send(make_message())
    server.replies.clear()
    await transport.send(make_message())
    await transport.aclose()

    assert [s.verbs for s in server.sessions] == [
        ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"],  # pipelined: RCPT and DATA went with MAIL
        ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"],
    ]


async def test_smtp_pool_keeps_a_connection_after_refused_recipients(
    smtp_server_factory, smtp_context
):
    server = smtp_server_factory(rcpt_replies={"nobody@example.com": "550 5.1.1 unknown"})
    transport = build(server, smtp_context, pool=True)

    await transport.send(make_message(to=["nobody@example.com"]))
    await transport.send(make_message())
    await transport.aclose()

    [session] = server.sessions
    assert session.verbs == [
        *("EHLO", "MAIL", "RCPT", "DATA", "RSET"),
        *("MAIL", "RCPT", "DATA", "QUIT"),
    ]


async def test_smtp_pool_replaces_a_connection_the_server_closed(smtp_server, smtp_context):
    transport = build(smtp_server, smtp_context, pool=True)
    await transport.send(make_message())

    smtp_server.disconnect_all()
    await smtp_server.wait_until(lambda: smtp_server.open_sessions == 0)
    await asyncio.sleep(0.05)
    result = await transport.send(make_message())
    await transport.aclose()

    assert result.reply_code == 250
    assert len(smtp_server.sessions) == 2


async def test_without_pool_each_send_has_its_own_connection(smtp_server, smtp_context):
    transport = build(smtp_server, smtp_context)

    for _ in range(3):
        await transport.send(make_message())

    assert [s.verbs[-1] for s in smtp_server.sessions] == ["QUIT"] * 3
    assert all(s.transactions == 1 for s in smtp_server.sessions)


async def test_send_after_aclose_fails(smtp_server, smtp_context):
    transport = build(smtp_server, smtp_context, pool=True)
    await transport.aclose()

    with pytest.raises(TemporaryError) as caught:
        await transport.send(make_message())

    assert caught.value.code == "ECONNECTION"
    assert smtp_server.sessions == []
