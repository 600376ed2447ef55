"""The shared throttle (app/throttle.py) and every limit built on it, on a real database: two
Throttles or two whole apps on one SQLite file (or one PostgreSQL database) act as replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.errors import TooManyRequests
from app.main import create_app
from app.throttle import COUNTERS, Throttle
from app.wiring import CORE, Core
from tests.conftest import ADMIN, SENDER, basic
from tests.delivery.conftest import add_smtp_profile
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio

START = 1_000_000 * 60.0
"""A fake wall clock at the start of a window."""


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pair(runtime: Core, limit: int = 5, clock: Clock | None = None) -> list[Throttle]:
    """Two Throttles of one name: two replicas' view of one limit."""
    return [
        Throttle(runtime.engine, name="t", limit=limit, what="tries", clock=clock or Clock())
        for _ in range(2)
    ]


async def refused(throttle: Throttle, key: str, n: int = 1) -> TooManyRequests:
    with pytest.raises(TooManyRequests) as caught:
        await throttle.hit(key, n)
    return caught.value


async def test_a_limit_is_shared_by_every_instance(runtime: Core) -> None:
    a, b = pair(runtime)
    for throttle in (a, b, a, b, a):
        await throttle.hit("k")
    error = await refused(b, "k")
    assert error.status_code == 429
    # all 5 at the very start of a window: 5 x (1 - g) + 1 <= 5 from g = 0.2 of the next one
    assert error.retry_after == 72
    assert "too many tries" in error.message
    await b.hit("other-key")  # per key


async def test_the_window_slides_with_the_weighted_estimate(runtime: Core) -> None:
    clock = Clock(START + 54)  # 90 % into a window
    a, b = pair(runtime, clock=clock)
    for _ in range(5):
        await a.hit("k")
    clock.now = START + 60 + 6  # 10 % into the next one: 5 x 0.9 = 4.5 still count
    assert await b.count("k") == pytest.approx(4.5)
    error = await refused(b, "k")
    # room for one more when 5 x (1 - f) <= 4, at f = 0.2: 6 s from here
    assert error.retry_after == 6
    clock.now = START + 60 + 30  # half way: 2.5 count, two more fit
    await b.hit("k")
    await a.hit("k")
    assert await a.count("k") == pytest.approx(4.5)
    await refused(a, "k")
    clock.now = START + 180  # two windows on, nothing counts
    assert await a.count("k") == 0
    await a.hit("k", 5)


async def test_retry_after_when_the_current_window_is_full(runtime: Core) -> None:
    clock = Clock(START + 15)
    [a, _] = pair(runtime, clock=clock)
    await a.hit("k", 5)
    error = await refused(a, "k")
    # the next window starts in 45 s; there 5 x (1 - g) + 1 <= 5 from g = 0.2: 12 s more
    assert error.retry_after == 57


async def test_a_batch_is_counted_whole_or_not_at_all(runtime: Core) -> None:
    [a, b] = pair(runtime)
    await a.hit("k", 3)
    await refused(b, "k", 3)
    assert await a.count("k") == 3, "a refused batch counts nothing"
    await b.hit("k", 2)
    await refused(a, "k")
    error = await refused(a, "big", 6)
    assert error.retry_after == 60


async def test_check_and_record_are_the_two_halves(runtime: Core) -> None:
    a, b = pair(runtime, limit=3)
    for _ in range(3):
        await a.check("client")
        await b.record("client")
    with pytest.raises(TooManyRequests):
        await b.check("client")
    await a.record("client")  # recording is unconditional
    assert await a.count("client") == 4


async def test_concurrent_hits_never_overshoot(
    runtime: Core, app_runtime: tuple[Any, Core], settings: Settings
) -> None:
    """Two engines (two replicas' connection pools) racing for one limit: exactly 5 pass."""
    other = create_app(settings.model_copy(update={"migrate_on_start": False}))
    async with other.router.lifespan_context(other):
        second: Core = CORE.of(other)
        throttles = [
            Throttle(engine, name="race", limit=5, what="tries")
            for engine in (runtime.engine, second.engine) * 10
        ]
        outcomes = await asyncio.gather(*(t.hit("k") for t in throttles), return_exceptions=True)
    assert sum(o is None for o in outcomes) == 5
    assert all(isinstance(o, TooManyRequests) for o in outcomes if o is not None)


async def test_keys_of_any_length_and_character(runtime: Core) -> None:
    [a, _] = pair(runtime, limit=1)
    for key in ("nul\0in-it", "é" * 10, "x" * 1_000, "a b\nc"):
        await a.hit(key)
        await refused(a, key)
    async with runtime.engine.connect() as conn:
        keys = list(await conn.scalars(select(COUNTERS.c.key)))
    assert all(len(k) <= 400 and k.isprintable() and k.isascii() for k in keys), keys


async def test_old_windows_are_pruned_now_and_then(runtime: Core) -> None:
    clock = Clock()
    [a, _] = pair(runtime, clock=clock)
    neighbour = Throttle(runtime.engine, name="u", limit=5, what="x", clock=clock)
    await neighbour.hit("k")
    for minute in range(5):
        clock.now = START + 60 * minute
        await a.hit(f"k{minute}")
    assert await rows(runtime) == 6, "pruned at most once a period per process"
    a._prune_at = 0.0  # a period later
    await a.hit("k")
    # this window's and the last one's rows stay; the other throttle's too
    assert await rows(runtime) == 4


async def rows(runtime: Core) -> int:
    async with runtime.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(COUNTERS)) or 0)


# --- two apps on one database -----------------------------------------------------------------


@pytest.fixture
async def replica(settings: Settings, app_runtime: tuple[Any, Core]) -> AsyncIterator[Any]:
    """A second app on the same database (on SQLite: the same file in the same data dir)."""
    other = create_app(settings.model_copy(update={"migrate_on_start": False}))
    async with other.router.lifespan_context(other):
        yield other


def client_of(app: Any, address: str, auth: tuple[str, str] | None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 5555))
    headers = basic(auth) if auth else {}
    return httpx.AsyncClient(transport=transport, base_url="http://postroom.test", headers=headers)


async def test_test_sends_are_five_a_minute_per_profile_across_replicas(
    admin: httpx.AsyncClient, replica: Any, smtp_server_factory: StartServer
) -> None:
    sink = smtp_server_factory()
    await add_smtp_profile(admin, sink, name="relay")
    await add_smtp_profile(admin, sink, name="other")
    async with client_of(replica, "203.0.113.8", ADMIN) as admin_b:
        answers = []
        for n in range(5):
            client = admin if n % 2 else admin_b
            answers.append(await client.post("/api/v1/servers/relay/test", json={}))
        assert [a.status_code for a in answers] == [200] * 5
        sixth = await admin_b.post("/api/v1/servers/relay/test", json={})
        assert sixth.status_code == 429, sixth.text
        assert sixth.json()["error"]["code"] == "too_many_requests"
        assert 1 <= int(sixth.headers["retry-after"]) <= 72
        assert (await admin.post("/api/v1/servers/relay/test", json={})).status_code == 429
        assert (await admin_b.post("/api/v1/servers/other/test", json={})).status_code == 200
    assert len(sink.transactions) == 6


async def test_the_send_rate_is_shared_by_replicas(
    settings: Settings, sender: httpx.AsyncClient
) -> None:
    limited = settings.model_copy(update={"send_rate_per_minute": 4, "migrate_on_start": False})
    apps = [create_app(limited), create_app(limited)]
    message = {"from": "me@example.com", "to": ["a@example.com"], "text": "t"}
    async with (
        apps[0].router.lifespan_context(apps[0]),
        apps[1].router.lifespan_context(apps[1]),
        client_of(apps[0], "203.0.113.9", SENDER) as a,
        client_of(apps[1], "203.0.113.9", SENDER) as b,
    ):
        assert (await a.post("/api/v1/messages", json=message)).status_code == 202
        assert (await b.post("/api/v1/messages", json=message)).status_code == 202
        batch = {"messages": [message, message]}
        assert (await a.post("/api/v1/messages/batch", json=batch)).status_code == 200
        fifth = await b.post("/api/v1/messages", json=message)
        assert fifth.status_code == 429, fifth.text
        assert (await a.post("/api/v1/messages/batch", json=batch)).status_code == 429
