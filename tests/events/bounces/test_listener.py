"""The bounce listener (`serve --bounce-port`): a real SMTP conversation with the app's listener,
answering 250 only after the commit, 451 when it could not record, 550 for what is no report."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiosmtplib
import httpx
import pytest
from sqlalchemy import select, text

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Heartbeat
from app.main import LOOPS
from app.wiring import Core
from tests.delivery.conftest import record
from tests.events.bounces.conftest import sample
from tests.events.bounces.test_ingest import dsn_events, sent_with_verp, stored_events
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"bounce_port": free_port()})


async def hand_in(settings: Settings, raw: bytes, rcpt: str) -> tuple[int, str]:
    """Deliver `raw` to the listener as an MTA would (null sender); the reply to the data."""
    assert settings.bounce_port is not None
    for _ in range(50):  # the supervised loop opens the socket as it starts
        try:
            async with aiosmtplib.SMTP(
                hostname="127.0.0.1", port=settings.bounce_port, start_tls=False
            ) as smtp:
                _errors, reply = await smtp.sendmail("", [rcpt], raw)
                return 250, reply
        except aiosmtplib.SMTPConnectError:
            await asyncio.sleep(0.1)
        except aiosmtplib.SMTPResponseException as err:
            return err.code, err.message
    raise AssertionError("the listener did not open")


async def test_a_report_over_smtp_is_recorded_before_the_250(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    settings: Settings,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    message_id, envelope = await sent_with_verp(
        admin, sender, dispatcher, smtp_server_factory, to=["ann@example.com"]
    )
    # The report's own headers carry a token of another key: the RCPT TO is what names ours.
    code, reply = await hand_in(settings, sample("exim-delayed.eml"), envelope)
    assert (code, reply) == (250, "2.0.0 recorded")
    [event] = dsn_events(await record(sender, message_id), "ann@example.com")
    assert event["type"] == "deferred"

    async with runtime.sessions() as session:
        loops = set(await session.scalars(select(Heartbeat.loop)))
    assert "bounce-listener" in loops


async def test_what_is_not_a_report_is_a_550_and_a_failure_a_451(
    runtime: Core, settings: Settings
) -> None:
    code, reply = await hand_in(settings, b"Subject: away\r\n\r\nback Monday\r\n", "x@b.example")
    assert code == 550
    assert "not a delivery report" in reply

    code, _ = await hand_in(settings, b"x" * (1024 * 1024 + 10), "x@b.example")
    assert code == 552

    async with runtime.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE delivery_events RENAME TO delivery_events_away"))
    try:
        code, reply = await hand_in(settings, sample("postfix.eml"), "x@b.example")
        assert code == 451
        assert "try again later" in reply
    finally:
        async with runtime.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE delivery_events_away RENAME TO delivery_events"))
    assert await stored_events(runtime) == 0
    code, _ = await hand_in(settings, sample("postfix.eml"), "x@b.example")  # the MTA's retry
    assert code == 250
    assert await stored_events(runtime) == 1


async def test_readyz_asks_the_bounce_listener_too(
    anon: httpx.AsyncClient, app_runtime: tuple[Any, Core]
) -> None:
    """Each loop the process runs answers for itself in /readyz: a bounce listener whose loop
    stopped takes the replica out, as a stopped dispatcher does, and its last error shows."""
    app, _ = app_runtime
    assert (await anon.get("/readyz")).status_code == 200
    [listener] = LOOPS.of(app).bounces
    assert listener.task is not None
    listener.last_error = "OSError: [Errno 98] address already in use"
    listener.task.cancel()
    await asyncio.gather(listener.task, return_exceptions=True)

    ready = await anon.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["the bounce listener is not running"]
    assert ready.json()["bounce-listener"] == {"lastError": listener.last_error}


async def test_readyz_fails_from_the_start_of_a_shutdown(
    anon: httpx.AsyncClient, app_runtime: tuple[Any, Core]
) -> None:
    LOOPS.of(app_runtime[0]).stopping()

    ready = await anon.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["the service is shutting down"]
