"""The submission listener (`serve --submission-port`): smtplib over STARTTLS and AUTH into the
real outbox, delivered by the dispatcher to a real SMTP sink; AUTH rules and the throttle; the
intake's refusals as SMTP replies; the 250 only after the commit."""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import socket
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.wiring import Core
from tests.conftest import SENDER
from tests.delivery.conftest import add_smtp_profile, record
from tests.smtpd import StartServer
from tests.submission.conftest import Certificate, client_context, connected, mail, transact

pytestmark = pytest.mark.anyio


async def messages(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


def queued_id(reply: str) -> str:
    """The message id in `250 2.0.0 Ok: queued as <id> <Message-ID>`."""
    assert reply.startswith("2.0.0 Ok: queued as "), reply
    return reply.split()[4]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_a_message_goes_from_smtplib_through_the_outbox_to_the_relay(
    mechanism: str,
    caplog: pytest.LogCaptureFixture,
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    settings: Settings,
    certificate: Certificate,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    relay = smtp_server_factory()
    await add_smtp_profile(admin, relay)
    message = mail(to=("Ann <ann@example.org>",))
    message["Cc"] = "bob@example.org"
    message["Reply-To"] = "billing@example.com"
    message["In-Reply-To"] = "<order-7@shop.example.com>"
    message["X-Invoice"] = "42"
    message["Message-ID"] = "<app-chosen@example.com>"
    message.add_alternative("<p>Your invoice is <b>attached</b>.</p>", subtype="html")
    message.add_attachment(b"%PDF-1.4 42", maintype="application", subtype="pdf", filename="42.pdf")
    rcpt = ["ann@example.org", "bob@example.org", "audit@example.org"]  # audit: Bcc

    def submit() -> tuple[int, str]:
        with connected(settings, certificate, mechanism=mechanism) as smtp:
            return transact(smtp, message, rcpt, "bounces@example.com")

    code, reply = await asyncio.to_thread(submit)
    assert code == 250, reply
    message_id = queued_id(reply)
    saved = await record(sender, message_id)  # stored before the 250
    assert saved["status"] == "queued"
    assert saved["createdBy"] == SENDER[0]
    assert saved["clientIp"] == "127.0.0.1"
    assert {(r["email"], r["kind"]) for r in saved["recipients"]} == {
        ("ann@example.org", "to"),
        ("bob@example.org", "cc"),
        ("audit@example.org", "bcc"),
    }
    assert reply.split()[5] == saved["messageId"] != "<app-chosen@example.com>"

    await dispatcher.drain()
    [sent] = relay.transactions
    assert sorted(sent.rcpt_tos) == sorted(rcpt)
    out = sent.message
    assert out["From"] == "app@example.com"
    assert out["To"] == "Ann <ann@example.org>"
    assert out["Cc"] == "bob@example.org"
    assert out["Bcc"] is None
    assert b"audit@example.org" not in sent.data
    assert out["Reply-To"] == "billing@example.com"
    assert out["Subject"] == "Invoice 42"
    assert out["In-Reply-To"] == "<order-7@shop.example.com>"
    assert out["X-Invoice"] == "42"
    assert out["Message-ID"] == saved["messageId"]
    body = out.get_body(("plain",))
    assert body is not None
    assert body.get_content().splitlines() == ["Your invoice is attached."]
    html = out.get_body(("html",))
    assert html is not None
    assert "<b>attached</b>" in html.get_content()
    [attachment] = list(out.iter_attachments())
    assert attachment.get_filename() == "42.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 42"
    assert (await record(sender, message_id))["status"] == "sent"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_mail_before_auth_is_530_and_auth_waits_for_starttls(
    sender: httpx.AsyncClient, settings: Settings, certificate: Certificate, runtime: Core
) -> None:
    def converse() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with connected(settings, None, credentials=None) as smtp:
            seen["clear features"] = dict(smtp.esmtp_features)
            seen["clear AUTH"] = smtp.docmd("AUTH", "PLAIN AHNlbmRlcgBzZW5kZXItcGFzc3dvcmQtMTIz")
            seen["clear MAIL"] = smtp.mail("app@example.com")
            smtp.starttls(context=client_context(certificate))
            smtp.ehlo("app.example.com")
            seen["tls features"] = dict(smtp.esmtp_features)
            as_admin = base64.b64encode(f"admin\0{SENDER[0]}\0{SENDER[1]}".encode()).decode()
            seen["tls AUTH as another"] = smtp.docmd("AUTH", f"PLAIN {as_admin}")
            seen["tls MAIL"] = smtp.mail("app@example.com")
            seen["tls RCPT"] = smtp.rcpt("ann@example.org")
            seen["tls DATA"] = smtp.docmd("DATA")
        return seen

    seen = await asyncio.to_thread(converse)
    assert "starttls" in seen["clear features"]
    assert "auth" not in seen["clear features"]
    assert seen["clear AUTH"][0] == 530
    assert seen["clear MAIL"][0] == 530
    assert seen["tls features"]["auth"].split() == ["LOGIN", "PLAIN"]
    assert seen["tls AUTH as another"] == (
        535,
        b"5.7.8 an authorization identity other than the user is not supported",
    )
    for command in ("tls MAIL", "tls RCPT", "tls DATA"):
        assert seen[command] == (530, b"5.7.0 Authentication required"), command
    assert await messages(runtime) == 0


@pytest.mark.parametrize("overrides", [{"login_failures_per_minute": 3}])
async def test_a_wrong_password_is_535_and_counts_toward_the_login_throttle(
    sender: httpx.AsyncClient, settings: Settings, certificate: Certificate, runtime: Core
) -> None:
    wrong = (SENDER[0], "not-the-password")

    def login(credentials: tuple[str, str]) -> tuple[int, str]:
        try:
            with connected(settings, certificate, credentials=credentials):
                return 235, ""
        except smtplib.SMTPAuthenticationError as err:
            error = err.smtp_error
            return err.smtp_code, error.decode() if isinstance(error, bytes) else error

    limit = runtime.settings.login_failures_per_minute
    for attempt in range(limit):
        assert await asyncio.to_thread(login, wrong) == (
            535,
            "5.7.8 Authentication credentials invalid",
        ), attempt
    assert await runtime.auth.throttle.count("127.0.0.1") == limit
    assert await runtime.auth.lockout.failures(SENDER[0]) == limit

    code, reply = await asyncio.to_thread(login, SENDER)  # the right one, from that address
    assert code == 454
    assert reply.startswith("4.7.0 too many failed logins")


async def test_the_senders_bounds_refuse_with_550_naming_the_rule(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    settings: Settings,
    certificate: Certificate,
    runtime: Core,
) -> None:
    def submit(sender_address: str) -> tuple[int, str]:
        with connected(settings, certificate) as smtp:
            return transact(smtp, mail(sender=sender_address), ["ann@example.org"], sender_address)

    code, reply = await asyncio.to_thread(submit, "ceo@example.net")
    assert code == 550
    assert reply.startswith("5.7.1 user sender may not send from ceo@example.net")
    assert "allowedFrom" in reply
    assert await messages(runtime) == 0

    code, reply = await asyncio.to_thread(submit, "app@example.com")
    assert code == 250, reply


async def test_an_api_token_logs_in_as_its_user(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    settings: Settings,
    certificate: Certificate,
    runtime: Core,
) -> None:
    issued = await admin.post(f"/api/v1/users/{SENDER[0]}/tokens", json={"name": "smtp"})
    assert issued.status_code == 201, issued.text
    token = issued.json()["token"]

    def submit() -> tuple[int, str]:
        with connected(settings, certificate, (SENDER[0], token)) as smtp:
            return transact(smtp, mail(sender="app@example.com"), ["ann@example.org"], "a@x.org")

    code, reply = await asyncio.to_thread(submit)
    assert code == 250, reply
    assert await messages(runtime) == 1
    gone = await admin.delete(f"/api/v1/users/{SENDER[0]}/tokens/{issued.json()['id']}")
    assert gone.status_code == 204
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        await asyncio.to_thread(submit)
    assert refused.value.smtp_code == 535


async def test_an_open_connection_sees_a_bounds_change_at_its_next_message(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    settings: Settings,
    certificate: Certificate,
    runtime: Core,
) -> None:
    loop = asyncio.get_running_loop()

    def narrow() -> None:
        changed = admin.patch(f"/api/v1/users/{SENDER[0]}", json={"allowedFrom": ["example.net"]})
        assert asyncio.run_coroutine_threadsafe(changed, loop).result().status_code == 200

    def two_messages() -> list[tuple[int, str]]:
        with connected(settings, certificate) as smtp:
            first = transact(smtp, mail(), ["ann@example.org"], "app@example.com")
            narrow()
            second = transact(smtp, mail(), ["ann@example.org"], "app@example.com")
        return [first, second]

    first, second = await asyncio.to_thread(two_messages)
    assert first[0] == 250, first
    assert second[0] == 550, second
    assert "allowedFrom" in second[1]


async def test_nothing_is_answered_250_before_the_commit(
    sender: httpx.AsyncClient, settings: Settings, certificate: Certificate, runtime: Core
) -> None:
    """A failure between the INSERT and the COMMIT is a 451 (the client keeps the message and
    tries again) with no row left; the retry's 250 comes with its row stored."""
    engine = runtime.engine.sync_engine

    def saw_insert(conn: Connection, *args: Any) -> None:
        if str(args[1]).lstrip().upper().startswith("INSERT INTO MESSAGES"):
            conn.info["inserted"] = True

    def fail_commit(conn: Connection) -> None:
        if conn.info.pop("inserted", False):
            raise RuntimeError("injected: the database fails at COMMIT")

    def forget(conn: Connection) -> None:
        conn.info.pop("inserted", None)

    def submit() -> tuple[int, str]:
        with connected(settings, certificate) as smtp:
            return transact(smtp, mail(), ["ann@example.org"], "app@example.com")

    hooks = [("after_cursor_execute", saw_insert), ("commit", fail_commit), ("rollback", forget)]
    for name, hook in hooks:
        event.listen(engine, name, hook)
    try:
        code, reply = await asyncio.to_thread(submit)
    finally:
        for name, hook in hooks:
            event.remove(engine, name, hook)
    assert (code, reply) == (451, "4.3.0 the message was not stored; try again later")
    assert await messages(runtime) == 0

    code, reply = await asyncio.to_thread(submit)
    assert code == 250, reply
    async with runtime.sessions() as session:
        stored = await session.get(Message, queued_id(reply))
    assert stored is not None


@pytest.mark.parametrize("overrides", [{"send_rate_per_minute": 3, "max_message_bytes": 2000}])
async def test_what_the_intake_refuses_is_answered_with_its_reason(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    settings: Settings,
    certificate: Certificate,
    runtime: Core,
) -> None:
    """The same checks as POST /messages: suppressions, the per-user rate (each message counts,
    refused or not, as on the API), the size limits."""
    added = await admin.post("/api/v1/suppressions", json={"address": "gone@example.org"})
    assert added.status_code == 201, added.text
    big = mail()
    big.add_attachment(b"x" * 3000, maintype="application", subtype="octet-stream", filename="b")

    def submit() -> list[tuple[int, str]]:
        with connected(settings, certificate) as smtp:
            both = ["ann@example.org", "gone@example.org"]
            message = mail(to=tuple(both))
            return [
                transact(smtp, message, both, "app@example.com"),
                transact(smtp, big, ["ann@example.org"], "app@example.com"),
                transact(smtp, mail(), ["ann@example.org"], "app@example.com"),
                transact(smtp, mail(), ["ann@example.org"], "app@example.com"),
            ]

    suppressed, too_big, second, over_rate = await asyncio.to_thread(submit)
    assert suppressed[0] == 250
    assert suppressed[1].endswith("; 1 recipients on the suppression list skipped")
    assert too_big == (552, "5.3.4 the attachments are over the message size limit")
    assert second[0] == 250
    assert over_rate[0] == 451
    assert over_rate[1].startswith("4.7.1 too many messages; try again later (in ")
    assert await messages(runtime) == 2


@pytest.mark.parametrize("overrides", [{"max_visible_recipients": 2}])
async def test_recipients_are_checked_as_they_come(
    sender: httpx.AsyncClient, settings: Settings, certificate: Certificate, runtime: Core
) -> None:

    def submit() -> list[tuple[int, bytes]]:
        with connected(settings, certificate) as smtp:
            smtp.mail("app@example.com")
            return [
                smtp.rcpt("ann@corp"),
                smtp.rcpt("ann@example.org"),
                smtp.rcpt("bob@example.org"),
                smtp.rcpt("carl@example.org"),
            ]

    local, ann, bob, carl = await asyncio.to_thread(submit)
    assert local[0] == 553
    assert local[1].startswith(b"5.1.3 ann@corp: ")
    assert b"POSTROOM_ALLOW_LOCAL_DOMAINS" in local[1]
    assert (ann[0], bob[0]) == (250, 250)
    assert carl == (452, b"4.5.3 too many recipients: 2 per message; send the rest in another")


async def test_a_login_that_cannot_be_checked_is_a_temporary_failure(
    sender: httpx.AsyncClient,
    settings: Settings,
    certificate: Certificate,
    runtime: Core,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database away: 454 (RFC 4954's temporary failure), the client tries again. Anything
    else that fails: 451, without the error's text."""

    def login() -> tuple[int, str]:
        try:
            with connected(settings, certificate):
                return 235, ""
        except smtplib.SMTPAuthenticationError as err:
            error = err.smtp_error
            return err.smtp_code, error.decode() if isinstance(error, bytes) else error

    async with runtime.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE users RENAME TO users_away"))
    try:
        away = await asyncio.to_thread(login)
    finally:
        async with runtime.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE users_away RENAME TO users"))
    assert away == (454, "4.7.0 Temporary authentication failure; try again later")

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug's secret details")

    monkeypatch.setattr(runtime.auth, "verify", broken)
    assert await asyncio.to_thread(login) == (451, "4.3.0 internal error; try again later")


async def test_a_failed_tls_handshake_closes_only_that_connection(
    sender: httpx.AsyncClient,
    settings: Settings,
    certificate: Certificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert settings.submission_port is not None
    port = settings.submission_port
    caplog.set_level(logging.INFO, logger="postroom.submission")

    def no_tls() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b"EHLO scanner\r\n")
            while reader.readline()[3:4] == b"-":
                pass
            sock.sendall(b"STARTTLS\r\n")
            assert reader.readline().startswith(b"220")
            sock.sendall(b"this is no TLS client hello\r\n" * 10)
            return reader.read()  # until the server closes

    assert b"internal error" not in await asyncio.to_thread(no_tls)

    def submit() -> tuple[int, str]:
        with connected(settings, certificate) as smtp:
            return transact(smtp, mail(), ["ann@example.org"], "app@example.com")

    code, reply = await asyncio.to_thread(submit)
    assert code == 250, reply
    assert "a STARTTLS handshake failed" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_message_postroom_cannot_carry_is_refused_not_cut(
    sender: httpx.AsyncClient, settings: Settings, certificate: Certificate, runtime: Core
) -> None:
    related = mail()
    related.add_alternative('<p><img src="cid:logo"></p>', subtype="html")
    html = related.get_body(("html",))
    assert isinstance(html, EmailMessage)
    html.add_related(b"PNG", maintype="image", subtype="png", cid="<logo>")

    def submit() -> tuple[int, str]:
        with connected(settings, certificate) as smtp:
            return transact(smtp, related, ["ann@example.org"], "app@example.com")

    code, reply = await asyncio.to_thread(submit)
    assert code == 554
    assert reply.startswith("5.6.1 multipart/related (inline images, cid: links) cannot be kept")
    assert await messages(runtime) == 0


@pytest.mark.parametrize("overrides", [{"submission_max_message_bytes": 1000}])
async def test_data_over_the_size_limit_is_552(
    sender: httpx.AsyncClient, settings: Settings, certificate: Certificate, runtime: Core
) -> None:

    def submit() -> tuple[dict[str, str], tuple[int, str]]:
        with connected(settings, certificate) as smtp:
            features = dict(smtp.esmtp_features)
            message = mail(text="x" * 2000)
            return features, transact(smtp, message, ["ann@example.org"], "app@example.com")

    features, (code, _) = await asyncio.to_thread(submit)
    assert features["size"] == "1000"
    assert code == 552
    assert await messages(runtime) == 0
