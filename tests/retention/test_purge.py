"""The retention purge: bodies go after POSTROOM_RETENTION_BODY_DAYS while the record and its
events stay, whole records after POSTROOM_RETENTION_RECORD_DAYS, in small batches; it runs
supervised beside the dispatcher and /readyz says when it does not."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from app.audit.models import AuditEntry
from app.config import Settings
from app.db import transaction, utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Attempt, Heartbeat, Message, Recipient
from app.events.models import EventRow
from app.main import LOOPS, Loops, create_app
from app.retention.purge import Purge
from app.wiring import CORE, Core
from tests.conftest import ADMIN, basic
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.smtpd import StartServer
from tests.themes.conftest import RESET, create

pytestmark = pytest.mark.anyio

DAY = timedelta(days=1)


@pytest.fixture
def dispatcher(runtime: Core) -> Dispatcher:
    return Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )


async def age(runtime: Core, message_id: str, days: float, **values: Any) -> None:
    """Make the message `days` old (and set any other column)."""
    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(created_at=utcnow() - timedelta(days=days), **values)
        )


async def rows(runtime: Core, message_id: str) -> dict[str, int]:
    async with runtime.sessions() as session:
        found = {}
        for name, column in (
            ("messages", Message.id),
            ("recipients", Recipient.message_pk),
            ("attempts", Attempt.message_pk),
            ("events", EventRow.message_pk),
        ):
            query = select(func.count()).where(column == message_id)
            found[name] = int(await session.scalar(query) or 0)
        return found


async def stored(runtime: Core, message_id: str) -> Message:
    async with runtime.sessions() as session:
        message = await session.get(Message, message_id)
        assert message is not None
        return message


async def delivered(
    admin: httpx.AsyncClient, dispatcher: Dispatcher, count: int, **body: Any
) -> list[str]:
    ids = [await send(admin, to=[f"r{n}@example.com"], **body) for n in range(count)]
    await dispatcher.drain()
    return ids


async def test_bodies_go_after_their_days_and_the_record_and_events_stay(
    admin: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory())
    await create(admin, "templates", RESET)
    attachment = {"filename": "a.txt", "contentType": "text/plain", "content": "aGVsbG8="}
    old, recent = await delivered(
        admin, dispatcher, 2, html="<p>secret</p>", attachments=[attachment]
    )
    body = {
        "template": "password_reset",
        "data": {"link": "https://acme.test/r", "name": "all"},
        "recipients": [{"email": "ann@example.com", "data": {"name": "Ann"}}, "bob@example.com"],
    }
    posted = await admin.post("/api/v1/messages", json=body)
    assert posted.status_code == 202, posted.text
    personal = posted.json()["id"]
    await dispatcher.drain()
    await age(runtime, old, 31)
    await age(runtime, personal, 31)
    await age(runtime, recent, 29)
    before = await rows(runtime, old)

    done = await Purge(runtime.sessions, runtime.settings).step()
    assert (done.bodies, done.records) == (2, 0)

    assert await rows(runtime, old) == before
    for message_id in (old, personal):
        message = await stored(runtime, message_id)
        assert message.body_purged_at is not None
        assert not set(message.payload) & {"text", "html", "attachments", "personal"}
    message = await stored(runtime, old)
    assert message.payload["to"] == [{"email": "r0@example.com"}]
    assert message.payload["from"]["email"] == "noreply@example.com"
    assert message.subject == "Hello"
    saved = await record(admin, old)
    assert saved["bodyPurgedAt"] is not None
    assert [e["type"] for e in saved["recipients"][0]["events"]] == ["queued", "sent"]
    async with runtime.sessions() as session:
        data = list(
            await session.scalars(select(Recipient.data).where(Recipient.data.is_not(None)))
        )
    assert data == []
    assert (await stored(runtime, recent)).payload["html"] == "<p>secret</p>"
    assert (await admin.get(f"/api/v1/messages/{old}/raw")).status_code == 410
    assert (await Purge(runtime.sessions, runtime.settings).step()).bodies == 0


async def test_records_go_whole_after_their_days(
    admin: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory())
    ancient, old = await delivered(admin, dispatcher, 2)
    await age(runtime, ancient, 401)
    await age(runtime, old, 399)
    done = await Purge(runtime.sessions, runtime.settings).step()
    assert (done.records, done.bodies) == (1, 1)
    assert await rows(runtime, ancient) == dict.fromkeys(
        ("messages", "recipients", "attempts", "events"), 0
    )
    assert (await admin.get(f"/api/v1/messages/{ancient}")).status_code == 404
    assert (await rows(runtime, old))["events"] == 1


async def test_unfinished_messages_and_ages_from_send_at_are_left_alone(
    admin: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory())
    [late] = await delivered(admin, dispatcher, 1)
    queued = await send(admin, to=["q@example.com"])
    await age(runtime, queued, 500)
    # posted long ago for a recent sendAt: its age counts from that
    await age(runtime, late, 500, send_at=utcnow() - 2 * DAY)
    done = await Purge(runtime.sessions, runtime.settings).step()
    assert not done
    assert (await stored(runtime, queued)).payload["text"] == "Hello"
    assert (await stored(runtime, late)).body_purged_at is None


async def test_the_purge_goes_in_batches_of_rows(
    admin: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    """Budget 7 rows: a message with one recipient and one event is 3, so 2 go per batch; a
    message of 10 recipients is over the budget and goes alone."""
    await add_smtp_profile(admin, smtp_server_factory())
    small = await delivered(admin, dispatcher, 5)
    big = await send(admin, to=[f"g{n}@example.com" for n in range(10)])
    await dispatcher.drain()
    for message_id in [*small, big]:
        await age(runtime, message_id, 500)
    settings = runtime.settings.model_copy(update={"purge_batch": 7})
    purge = Purge(runtime.sessions, settings)
    before = utcnow() - timedelta(days=400)
    assert [await purge._records(before) for _ in range(5)] == [2, 2, 1, 1, 0]
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 0


async def test_other_logs_are_purged_with_the_records_cutoff(runtime: Core) -> None:
    calls: list[tuple[datetime, int]] = []

    async def audit(session: Any, before: datetime, limit: int) -> int:
        calls.append((before, limit))
        return limit if len(calls) < 3 else 0

    done = await Purge(runtime.sessions, runtime.settings, others=(audit,)).step()
    assert done.other == 2 * runtime.settings.purge_batch
    assert len(calls) == 3
    cutoff = utcnow() - timedelta(days=runtime.settings.retention_record_days)
    assert all(abs((before - cutoff).total_seconds()) < 5 for before, _ in calls)


async def test_the_audit_log_goes_with_the_records_cutoff(runtime: Core) -> None:
    days = runtime.settings.retention_record_days
    async with transaction(runtime.sessions) as session:
        for age, name in ((days + 1, "old"), (days - 1, "young")):
            session.add(
                AuditEntry(
                    at=utcnow() - timedelta(days=age),
                    actor="admin",
                    via="basic",
                    action="user.create",
                    target_kind="user",
                    target_name=name,
                    changes={},
                )
            )
    done = await Purge(runtime.sessions, runtime.settings).step()
    assert done.other == 1
    async with runtime.sessions() as session:
        left = set(await session.scalars(select(AuditEntry.target_name)))
    assert "old" not in left
    assert "young" in left


async def test_two_purges_at_once_share_the_work(
    admin: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory())
    ids = await delivered(admin, dispatcher, 12)
    for message_id in ids[:6]:
        await age(runtime, message_id, 500)
    for message_id in ids[6:]:
        await age(runtime, message_id, 40)
    settings = runtime.settings.model_copy(update={"purge_batch": 4})
    first, second = await asyncio.gather(
        Purge(runtime.sessions, settings).step(), Purge(runtime.sessions, settings).step()
    )
    assert first.records + second.records == 6
    assert first.bodies + second.bodies == 6
    async with runtime.sessions() as session:
        kept = await session.scalar(select(func.count()).where(Message.body_purged_at.is_(None)))
    assert kept == 0


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[tuple[Core, httpx.AsyncClient, Loops]]:
    """The app with its dispatcher in-process, as `postroom serve` runs it, purging often."""
    settings = settings.model_copy(
        update={"dispatcher": True, "poll_interval": 0.2, "purge_interval": 0.1}
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
        ) as admin:
            yield CORE.of(app), admin, LOOPS.of(app)


async def until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_the_purge_runs_supervised_beside_the_dispatcher(
    live: tuple[Core, httpx.AsyncClient, Loops],
    smtp_server_factory: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime, admin, running = live
    real_bodies = Purge._bodies
    failures = 0

    async def flaky_bodies(self: Purge, *args: Any) -> int:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("the database went away")
        return await real_bodies(self, *args)

    monkeypatch.setattr(Purge, "_bodies", flaky_bodies)
    caplog.set_level(logging.ERROR, logger="postroom.loops")
    await add_smtp_profile(admin, smtp_server_factory())
    message_id = await send(admin, to=["ann@example.com"])

    async def sent() -> bool:
        return bool((await record(admin, message_id))["status"] == "sent")

    await until(sent, 10, "delivery")
    async with runtime.sessions() as session:
        loops = set(await session.scalars(select(Heartbeat.loop)))
    assert "purge" in loops

    async def failed_twice() -> bool:
        return failures == 2

    await until(failed_twice, 10, "two failed passes")
    assert runtime.metrics.value("postroom_loop_errors_total", loop="purge") == 2
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any("the database went away" in str(raised) for raised in logged)
    await age(runtime, message_id, 31)

    async def purged() -> bool:
        return (await stored(runtime, message_id)).body_purged_at is not None

    await until(purged, 15, "the purge after two failed passes")
    assert (await admin.get("/readyz")).status_code == 200

    assert running.purge is not None
    assert running.purge.task is not None
    running.purge.task.cancel()
    await asyncio.gather(running.purge.task, return_exceptions=True)
    stopped = await admin.get("/readyz")
    assert stopped.status_code == 503
    assert "the retention purge is not running" in stopped.json()["reasons"]
