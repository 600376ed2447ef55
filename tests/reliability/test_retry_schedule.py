"""Check 12: the retry schedule against a server that always answers 451, on a fake clock.

The anchors' numbers are Postfix's (300 s doubling to 4,000 s, 5 days, 90-150 attempts). Postroom's
defaults are the delivery issue's: 60 s base doubling per attempt, 1,800 s cap, ±25 % jitter,
given up at 24 h. This checks those, and that three settings change the schedule.
"""

from __future__ import annotations

import itertools

import httpx
import pytest

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.reliability.conftest import FakeClock, Report, attempt_times, play
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio

JITTER = 0.25


def expected_bounds(base: float, cap: float, age: float) -> tuple[int, int]:
    """The fewest and the most attempts the schedule allows before giving up at `age`."""

    def attempts(factor: float) -> int:
        elapsed, count = 0.0, 1
        while elapsed < age:
            elapsed += min(cap, base * 2 ** (count - 1)) * factor
            count += 1
        return count

    return attempts(1 + JITTER), attempts(1 - JITTER)


async def run_schedule(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    clock: FakeClock,
    smtp_server_factory: StartServer,
) -> tuple[dict[str, object], list[float], float]:
    """Send one message to a server that always says 451 until Postroom gives up; the record, the
    gaps between attempts (s) and when the last attempt was, from acceptance (s)."""
    settings = runtime.settings
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try again later"})
    await add_smtp_profile(admin, server)
    accepted = clock.now
    message_id = await send(sender, to=["ann@example.com"])
    dispatcher = Dispatcher(
        runtime.sessions, settings, runtime.transports, runtime.metrics, runtime.ledger
    )
    await play(runtime, dispatcher, clock, settings.max_message_age + 2 * settings.retry_max)
    saved = await record(admin, message_id)
    times = await attempt_times(runtime, message_id)
    assert times[0] == accepted
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    return saved, gaps, (times[-1] - accepted).total_seconds()


def check_schedule(
    saved: dict[str, object], gaps: list[float], last: float, base: float, cap: float, age: float
) -> None:
    assert saved["status"] == "failed"
    assert base * (1 - JITTER) <= gaps[0] <= base * (1 + JITTER)
    for number, gap in enumerate(gaps, start=1):
        nominal = min(cap, base * 2 ** (number - 1))
        assert nominal * (1 - JITTER) <= gap <= nominal * (1 + JITTER), (number, gap)
    assert max(gaps) <= cap * (1 + JITTER)
    assert age <= last <= age + cap * (1 + JITTER)
    assert last - gaps[-1] < age, "the attempt before the last was within the lifetime"
    fewest, most = expected_bounds(base, cap, age)
    assert fewest <= len(gaps) + 1 <= most


async def test_default_schedule(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    report: Report,
) -> None:
    """60 s doubling, capped at 1,800 s (2,250 s with jitter), failed at 24 h + at most one
    interval."""
    settings = runtime.settings
    base, cap, age = settings.retry_base, settings.retry_max, settings.max_message_age
    assert (base, cap, age) == (60, 1800, 86_400)
    saved, gaps, last = await run_schedule(admin, sender, runtime, clock, smtp_server_factory)
    check_schedule(saved, gaps, last, base, cap, age)
    fewest, most = expected_bounds(base, cap, age)
    report(
        12,
        f"defaults: first retry {gaps[0]:.0f} s after the failure, longest interval "
        f"{max(gaps):.0f} s, failed {last / 3600:.2f} h after acceptance, {len(gaps) + 1} attempts "
        f"(schedule allows {fewest}-{most})",
    )


async def test_configured_schedule(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    report: Report,
) -> None:
    """POSTROOM_RETRY_BASE / POSTROOM_RETRY_MAX / POSTROOM_MAX_MESSAGE_AGE change the schedule."""
    monkeypatch.setenv("POSTROOM_RETRY_BASE", "10")
    monkeypatch.setenv("POSTROOM_RETRY_MAX", "100")
    monkeypatch.setenv("POSTROOM_MAX_MESSAGE_AGE", "3600")
    configured = Settings(_env_file=None)
    runtime.settings.retry_base = configured.retry_base
    runtime.settings.retry_max = configured.retry_max
    runtime.settings.max_message_age = configured.max_message_age
    saved, gaps, last = await run_schedule(admin, sender, runtime, clock, smtp_server_factory)
    check_schedule(saved, gaps, last, 10, 100, 3600)
    report(
        12,
        f"base 10 / cap 100 / age 3600: first retry {gaps[0]:.1f} s, longest {max(gaps):.0f} s, "
        f"failed at {last:.0f} s, {len(gaps) + 1} attempts",
    )


async def test_a_message_that_crashes_every_attempt_is_given_up_at_the_max_age(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    smtp_server_factory: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    report: Report,
) -> None:
    """A message whose every attempt hits a bug (an exception no transport error explains) is
    recorded as a deferred EINTERNAL attempt each time, retried on the normal schedule, and
    fails at the max age instead of looping. (Before issue 13 it stayed in `sending` with no
    attempt until its lease expired: 15 minutes of nothing to see per crash.)"""
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in composing")

    monkeypatch.setattr("app.delivery.shape.compose", crash)
    settings = runtime.settings
    await dispatcher.drain()
    first = await record(admin, message_id)
    assert first["status"] == "queued"
    [attempt] = first["attemptLog"]
    assert (attempt["outcome"], attempt["errorCode"]) == ("deferred", "EINTERNAL")
    assert "RuntimeError: a bug in composing" in attempt["error"]
    await play(runtime, dispatcher, clock, settings.max_message_age + 2 * settings.retry_max)
    saved = await record(admin, message_id)
    assert saved["status"] == "failed"
    assert saved["recipients"][0]["status"] == "failed"
    assert {a["errorCode"] for a in saved["attemptLog"]} == {"EINTERNAL"}
    rounds = len(saved["attemptLog"])
    fewest, most = expected_bounds(
        settings.retry_base, settings.retry_max, settings.max_message_age
    )
    assert fewest <= rounds <= most
    assert server.transactions == []
    report(
        12,
        f"every attempt crashing: {rounds} EINTERNAL attempts on the retry schedule, then failed "
        f"(schedule allows {fewest}-{most})",
    )
