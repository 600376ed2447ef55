"""The IMAP poller against a real dovecot: reports in the bounce mailbox become events, each
marked \\Seen (or moved) only after its commit; what is not a report is marked and skipped."""

from __future__ import annotations

import asyncio
import imaplib
import time

import httpx
import pytest
from sqlalchemy import select, text

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Heartbeat
from app.events.bounces.imap import ImapPoller, ImapSettings
from app.events.bounces.service import Bounces
from app.wiring import Core
from tests.delivery.conftest import record
from tests.events.bounces.conftest import sample
from tests.events.bounces.test_ingest import dsn_events, sent_with_verp, stored_events
from tests.imapd import ImapServer
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


def mailbox(server: ImapServer) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(server.host, server.port)
    imap.login(server.user, server.password)
    return imap


def deliver(server: ImapServer, *messages: bytes) -> None:
    imap = mailbox(server)
    try:
        for raw in messages:
            assert imap.append("INBOX", None, None, raw)[0] == "OK"
    finally:
        imap.logout()


def unseen(server: ImapServer, folder: str = "INBOX") -> tuple[int, int]:
    """(messages, unseen) in the folder."""
    imap = mailbox(server)
    try:
        answer = imap.status(folder, "(MESSAGES UNSEEN)")[1][0]
        assert isinstance(answer, bytes)
        words = answer.decode().replace("(", " ").replace(")", " ").split()
        return int(words[words.index("MESSAGES") + 1]), int(words[words.index("UNSEEN") + 1])
    finally:
        imap.logout()


def poller(runtime: Core, server: ImapServer, done_folder: str = "") -> ImapPoller:
    settings = runtime.settings.model_copy(
        update={
            "bounce_imap_host": server.host,
            "bounce_imap_port": server.port,
            "bounce_imap_security": "none",
            "bounce_imap_user": server.user,
            "bounce_imap_password": server.password,
            "bounce_imap_done_folder": done_folder,
        }
    )
    config = ImapSettings.of(settings)
    assert config is not None
    bounces = Bounces(runtime.sessions, runtime.transports.verp, runtime.metrics)
    return ImapPoller(bounces, config)


async def test_a_bounce_in_the_mailbox_is_recorded_then_marked_seen(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    imap_server: ImapServer,
) -> None:
    message_id, envelope = await sent_with_verp(
        admin, sender, dispatcher, smtp_server_factory, to=["ann@contoso.com"]
    )
    deliver(
        imap_server,
        sample("exchange-online.eml", verp=envelope),
        b"From: someone@example.net\r\nSubject: out of office\r\n\r\nAway.\r\n",
    )
    assert await poller(runtime, imap_server).poll() == 2
    [event] = dsn_events(await record(sender, message_id), "ann@contoso.com")
    assert (event["type"], event["bounceType"]) == ("bounced", "hard")
    assert unseen(imap_server) == (2, 0)
    assert await poller(runtime, imap_server).poll() == 0  # nothing left to read


async def test_a_report_not_recorded_stays_unseen_for_the_next_poll(
    runtime: Core, imap_server: ImapServer
) -> None:
    deliver(imap_server, sample("gmail.eml"))
    async with runtime.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE delivery_events RENAME TO delivery_events_away"))
    try:
        with pytest.raises(Exception, match="delivery_events"):
            await poller(runtime, imap_server).poll()
    finally:
        async with runtime.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE delivery_events_away RENAME TO delivery_events"))
    assert unseen(imap_server) == (1, 1)
    assert await poller(runtime, imap_server).poll() == 1
    assert await stored_events(runtime) == 1
    assert unseen(imap_server) == (1, 0)


async def test_processed_mail_moves_to_the_done_folder(
    runtime: Core, imap_server: ImapServer
) -> None:
    imap = mailbox(imap_server)
    assert imap.create("Processed")[0] == "OK"
    imap.logout()
    deliver(imap_server, sample("postfix.eml"))
    assert await poller(runtime, imap_server, done_folder="Processed").poll() == 1
    assert unseen(imap_server) == (0, 0)
    assert unseen(imap_server, "Processed") == (1, 0)
    assert await stored_events(runtime) == 1


class TestInTheApp:
    @pytest.fixture
    def settings(self, settings: Settings, imap_server: ImapServer) -> Settings:
        """The app itself polls the mailbox, every 0.2 s."""
        return settings.model_copy(
            update={
                "bounce_imap_host": imap_server.host,
                "bounce_imap_port": imap_server.port,
                "bounce_imap_security": "none",
                "bounce_imap_user": imap_server.user,
                "bounce_imap_password": imap_server.password,
                "bounce_poll_interval": 0.2,
            }
        )

    async def test_the_app_polls_the_mailbox_in_a_supervised_loop(
        self, runtime: Core, imap_server: ImapServer
    ) -> None:
        deliver(imap_server, sample("arf-abuse.eml"))
        deadline = time.monotonic() + 15
        while await stored_events(runtime) == 0:
            assert time.monotonic() < deadline, imap_server.log.read_text()
            await asyncio.sleep(0.1)
        async with runtime.sessions() as session:
            loops = set(await session.scalars(select(Heartbeat.loop)))
        assert "bounce-imap" in loops
