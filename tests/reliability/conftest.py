"""Shared by the reliability checks (../shared/reference/reliability-anchors.md §5): a fake clock
for the outbox, a runner that plays a simulated time window, and the report of what each check
measured, printed at the end of the run ("reliability checks: measured").

FULL (env POSTROOM_RELIABILITY_FULL=1) runs the on-demand sizes: 1,000 Hypothesis examples, 500
timing samples, 10,000 rows, 200 Schemathesis examples per operation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.db import utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Attempt, Message
from app.wiring import Core

FULL = os.environ.get("POSTROOM_RELIABILITY_FULL", "") not in ("", "0", "false")

_MEASURED: list[tuple[str, str, str]] = []


Report = Callable[..., None]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """report(check, "what was measured"): one line of the end-of-run table."""

    def add(check: int | str, text: str) -> None:
        _MEASURED.append((str(check), request.node.name, text))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _MEASURED:
        return
    terminalreporter.section("reliability checks: measured")
    for check, name, text in sorted(_MEASURED, key=lambda row: (int(row[0]), row[1])):
        terminalreporter.write_line(f"check {check:>2}  {name}: {text}")


@dataclass
class FakeClock:
    """The outbox's and the dispatcher's idea of now; starts at the real now."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        self.now = max(self.now, when)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Every `utcnow()` of the send path (accepting, claiming, finishing) reads this clock."""
    fake = FakeClock(utcnow())
    for module in (
        "app.delivery.outbox",
        "app.delivery.dispatcher",
        "app.delivery.job",
        "app.messages.service",
    ):
        monkeypatch.setattr(f"{module}.utcnow", fake)
    return fake


async def play(
    runtime: Core,
    dispatcher: Dispatcher,
    clock: FakeClock,
    seconds: float,
    *,
    granularity: float = 0.0,
) -> None:
    """Deliver everything, jumping the clock to each next due time, for `seconds` of fake time.

    With `granularity`, each jump goes that much past the next due time (never past the end), so
    messages due close together are sent by one drain (their attempts are then up to that much
    late)."""
    end = clock.now + timedelta(seconds=seconds)
    while True:
        await dispatcher.drain()
        async with runtime.sessions() as session:
            due = await session.scalar(
                select(func.min(Message.next_attempt_at)).where(Message.status == "queued")
            )
        if due is None or due > end:
            return
        clock.set(min(due + timedelta(seconds=granularity), end))


async def attempt_times(runtime: Core, message_pk: str) -> list[datetime]:
    async with runtime.sessions() as session:
        rows = await session.scalars(
            select(Attempt.started_at).where(Attempt.message_pk == message_pk).order_by(Attempt.id)
        )
        return list(rows)


@pytest.fixture
def dispatcher(runtime: Core) -> Dispatcher:
    return Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )
