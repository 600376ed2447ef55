"""Running unattended (issue 13.1, 13.2, 13.5, 13.8): the dispatcher never dies silently, a probe
holds no database session while it waits on a server, /readyz and /metrics tell the truth."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from app.config import Settings
from app.db import transaction, utcnow
from app.delivery import outbox
from app.delivery.models import Attempt, Heartbeat, Message
from app.main import LOOPS, create_app
from app.transports.memory import MemoryTransport
from app.transports.result import SendResult
from app.wiring import CORE, Core
from tests.conftest import ADMIN, basic
from tests.delivery.conftest import add_smtp_profile, send
from tests.smtpd import SmtpServer

pytestmark = pytest.mark.anyio


class Live:
    """An app whose dispatcher runs in-process, as `postroom serve` runs it."""

    def __init__(self, app: Any, runtime: Core, admin: httpx.AsyncClient) -> None:
        self.app = app
        self.runtime = runtime
        self.admin = admin

    async def statuses(self) -> dict[str, int]:
        async with self.runtime.sessions() as session:
            rows = await session.execute(
                select(Message.status, func.count()).group_by(Message.status)
            )
            return {status: count for status, count in rows}

    async def until(self, check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def all_sent(self, count: int) -> bool:
        return (await self.statuses()).get("sent", 0) == count


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    settings = settings.model_copy(update={"dispatcher": True, "poll_interval": 0.2})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
        ) as admin:
            yield Live(app, CORE.of(app), admin)


async def test_a_verify_stuck_in_auth_does_not_stop_delivery(
    live: Live, smtp_server_factory: Callable[..., SmtpServer]
) -> None:
    """Before: the verify held the request's session (SQLite: the pool's one connection) for the
    whole probe, the dispatcher's claim waited for it, and nothing was delivered meanwhile."""
    sink = smtp_server_factory()
    stuck = smtp_server_factory(users={"alice": "secret-pass"}, delays={"AUTH": 25.0})
    await add_smtp_profile(live.admin, sink, "sink", isDefault=True)
    await add_smtp_profile(
        live.admin,
        stuck,
        "stuck",
        settings={"user": "alice", "pass": "secret-pass", "socketTimeout": 20_000},
    )
    verify = asyncio.create_task(live.admin.post("/api/v1/servers/stuck/verify", json={}))
    await live.until(
        lambda: _true(any("AUTH" in s.verbs for s in stuck.sessions)), 10, "AUTH to start"
    )
    for chunk in range(10):
        await asyncio.gather(
            *(send(live.admin, to=[f"r{chunk}-{i}@example.com"]) for i in range(10))
        )
    await live.until(lambda: live.all_sent(100), 15, "the 100 messages to be delivered")
    assert not verify.done(), "the verify returned before the messages were delivered"
    assert len(sink.transactions) == 100
    report = (await verify).json()
    assert report["ok"] is False
    assert [s["name"] for s in report["steps"] if not s["ok"]] == ["auth"]


async def _true(value: bool) -> bool:
    return value


async def test_the_dispatcher_survives_a_failing_pass(
    live: Live,
    smtp_server_factory: Callable[..., SmtpServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: an exception in a claim killed the dispatcher's task, unlogged; POSTs still got
    202 and nothing was delivered until a restart."""
    sink = smtp_server_factory()
    await add_smtp_profile(live.admin, sink, "sink", isDefault=True)
    real_claim = outbox.claim
    failures = 0

    async def flaky_claim(*args: Any, **kwargs: Any) -> list[outbox.Claim]:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise RuntimeError("the database went away")
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(outbox, "claim", flaky_claim)
    caplog.set_level(logging.ERROR, logger="postroom.dispatcher")
    await asyncio.gather(*(send(live.admin, to=[f"r{i}@example.com"]) for i in range(5)))
    await live.until(lambda: live.all_sent(5), 15, "delivery after the failed passes")
    assert failures == 3
    metrics = await live.admin.get("/metrics")
    samples = _samples(metrics.text)
    assert samples[("postroom_loop_errors_total", (("loop", "dispatcher"),))] == 3
    logged = [r for r in caplog.records if "pass failed" in r.getMessage()]
    assert len(logged) == 3
    assert all(r.exc_info and "the database went away" in str(r.exc_info[1]) for r in logged)


async def test_readyz_says_when_the_dispatcher_stopped_or_went_stale(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = await live.admin.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["dispatcher"]["heartbeatAge"] < 5

    async def broken_claim(*args: Any, **kwargs: Any) -> list[outbox.Claim]:
        raise RuntimeError("claims keep failing")

    monkeypatch.setattr(outbox, "claim", broken_claim)
    dispatcher = LOOPS.of(live.app).dispatcher
    assert dispatcher is not None
    await live.until(lambda: _true(dispatcher.last_error is not None), 5, "a failed pass")
    async with transaction(live.runtime.sessions) as session:
        await session.execute(update(Heartbeat).values(beat_at=utcnow() - timedelta(seconds=45)))
    stale = await live.admin.get("/readyz")
    assert stale.status_code == 503
    assert "heartbeat is stale" in stale.json()["reasons"][0]
    assert "claims keep failing" in stale.json()["dispatcher"]["lastError"]
    gauges = _samples((await live.admin.get("/metrics")).text)
    assert gauges[("postroom_dispatchers_live", ())] == 0

    assert dispatcher.task is not None
    dispatcher.task.cancel()
    await asyncio.gather(dispatcher.task, return_exceptions=True)
    stopped = await live.admin.get("/readyz")
    assert stopped.status_code == 503
    assert "the dispatcher is not running" in stopped.json()["reasons"]


async def test_metrics_report_the_queue_the_loops_and_the_latencies(
    live: Live, smtp_server_factory: Callable[..., SmtpServer]
) -> None:
    sink = smtp_server_factory()
    locked = smtp_server_factory(users={"alice": "right-password"})
    await add_smtp_profile(live.admin, sink, "sink", isDefault=True)
    await add_smtp_profile(
        live.admin, locked, "locked", settings={"user": "alice", "pass": "wrong-password"}
    )
    for i in range(3):
        await send(live.admin, to=[f"r{i}@example.com"])
    await live.until(lambda: live.all_sent(3), 10, "3 deliveries")
    await send(live.admin, to=["x@example.com"], server="locked")
    await live.until(
        lambda: _true(len(locked.sessions) >= 1 and locked.sessions[0].closed), 10, "the AUTH"
    )

    async def failing() -> bool:
        text = (await live.admin.get("/metrics")).text
        return _samples(text).get(("postroom_profiles", (("health", "failing"),))) == 1

    await live.until(failing, 10, "the locked profile to be marked failing")
    response = await live.admin.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("postroom_queue_messages", "postroom_delivery_latency_seconds"):
        assert f"# HELP {name} " in text
        assert f"# TYPE {name} " in text
    s = _samples(text)
    assert s[("postroom_queue_messages", (("status", "sent"),))] == 3
    assert s[("postroom_queue_messages", (("status", "queued"),))] == 1
    assert s[("postroom_delivery_latency_seconds_count", ())] == 3
    assert s[("postroom_attempt_duration_seconds_count", (("type", "smtp"),))] == 4
    assert s[("postroom_dispatchers_live", ())] == 1
    assert s[("postroom_profiles", (("health", "ok"),))] == 1
    assert s[("postroom_profile_failing", (("profile", "locked"), ("type", "smtp")))] == 1
    refused = ("postroom_configuration_errors_total", (("code", "EAUTH"), ("profile", "locked")))
    assert s[refused] == 1
    assert s[("postroom_queue_oldest_due_seconds", ())] == 0
    assert s[("postroom_loops_live", (("loop", "webhooks"),))] == 1
    [beat] = [
        k
        for k in s
        if k[0] == "postroom_dispatcher_heartbeat_age_seconds" and ("loop", "dispatcher") in k[1]
    ]
    assert s[beat] < 10


async def test_an_unexpected_exception_is_recorded_on_the_message(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the message stayed in `sending` with no attempt until its lease expired."""

    def bug(message: Any) -> SendResult:
        raise ZeroDivisionError("a bug in a transport")

    broken = MemoryTransport("builtin", bug)
    monkeypatch.setattr(type(live.runtime.transports), "builtin", property(lambda _: broken))
    message_id = await send(live.admin, to=["ann@example.com"], **{"from": "me@example.com"})

    async def recorded() -> bool:
        async with live.runtime.sessions() as session:
            return bool(await session.scalar(select(func.count()).select_from(Attempt)))

    await live.until(recorded, 10, "the attempt")
    answer = (await live.admin.get(f"/api/v1/messages/{message_id}")).json()
    assert answer["status"] == "queued"
    [attempt] = answer["attemptLog"]
    assert attempt["errorCode"] == "EINTERNAL"
    assert "ZeroDivisionError: a bug in a transport" in attempt["error"]
    samples = _samples((await live.admin.get("/metrics")).text)
    assert samples[("postroom_internal_errors_total", ())] == 1


async def test_a_test_send_without_to_goes_to_the_branding_sender(
    live: Live, smtp_server_factory: Callable[..., SmtpServer]
) -> None:
    sink = smtp_server_factory()
    await add_smtp_profile(live.admin, sink, "sink", senderEmail=None)
    refused = await live.admin.post("/api/v1/servers/sink/test", json={})
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["field"] == "to"
    await live.admin.post("/api/branding", json={"emails": {"senderEmail": "reports@example.com"}})
    sent = await live.admin.post("/api/v1/servers/sink/test", json={})
    assert sent.status_code == 200, sent.text
    assert sent.json()["ok"] is True
    assert sent.json()["to"] == "reports@example.com"
    assert sink.transactions[-1].rcpt_tos == ["reports@example.com"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Buggy(MemoryTransport):
    async def verify(self) -> Any:
        raise KeyError("a bug in verify")


async def test_an_unexpected_exception_in_verify_or_test_is_a_report_not_a_500(
    live: Live, smtp_server_factory: Callable[..., SmtpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(message: Any) -> SendResult:
        raise ZeroDivisionError("a bug in send")

    await add_smtp_profile(live.admin, smtp_server_factory(), "sink")
    monkeypatch.setattr(
        "app.delivery.probe.registry.build", lambda *args: _Buggy("sink", responder=bug)
    )
    verified = await live.admin.post("/api/v1/servers/sink/verify", json={})
    assert verified.status_code == 200, verified.text
    assert verified.json()["ok"] is False
    assert verified.json()["errorCode"] == "EINTERNAL"
    assert "KeyError" in verified.json()["steps"][0]["detail"]
    tested = await live.admin.post("/api/v1/servers/sink/test", json={})
    assert tested.status_code == 200, tested.text
    assert (tested.json()["ok"], tested.json()["errorCode"]) == (False, "EINTERNAL")
    assert "ZeroDivisionError: a bug in send" in tested.json()["error"]


@pytest.mark.parametrize(
    ("server_tls", "extra", "reason"),
    [
        ("starttls", {"requireTLS": True}, "certificate"),
        ("none", {"requireTLS": True}, "STARTTLS"),
    ],
    ids=["untrusted-certificate", "requireTLS-without-STARTTLS"],
)
async def test_a_configuration_error_marks_the_profile_failing_and_is_retried(
    live: Live,
    smtp_server_factory: Callable[..., SmtpServer],
    server_tls: str,
    extra: dict[str, Any],
    reason: str,
) -> None:
    """Issue 13.5: before, only refused credentials marked a profile failing; a certificate that
    fails verification or a server without the required STARTTLS retried quietly for 24 h."""
    server = smtp_server_factory(tls=server_tls)
    await add_smtp_profile(live.admin, server, "relay", settings={"ignoreTLS": False, **extra})
    message_id = await send(live.admin, to=["ann@example.com"])

    async def failing() -> bool:
        profile = (await live.admin.get("/api/v1/servers/relay")).json()
        return bool(profile["health"]["status"] == "failing")

    await live.until(failing, 10, "the profile to be marked failing")
    profile = (await live.admin.get("/api/v1/servers/relay")).json()
    assert reason in profile["health"]["error"]
    answer = (await live.admin.get(f"/api/v1/messages/{message_id}")).json()
    assert answer["status"] == "queued", "retried on the normal schedule"
    assert answer["attemptLog"][0]["outcome"] == "deferred"
    assert server.transactions == []
    samples = _samples((await live.admin.get("/metrics")).text)
    refused = [
        value
        for (name, labels), value in samples.items()
        if name == "postroom_configuration_errors_total" and ("profile", "relay") in labels
    ]
    assert refused == [1]
    assert samples[("postroom_profile_failing", (("profile", "relay"), ("type", "smtp")))] == 1
