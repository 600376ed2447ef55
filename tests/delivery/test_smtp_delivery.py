"""POST /messages -> outbox -> dispatcher -> a real SMTP server (aiosmtpd), and what is recorded."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from app.delivery.dispatcher import Dispatcher
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, make_due, record, send
from tests.smtpd import DROP, StartServer

pytestmark = pytest.mark.anyio


async def test_visible_mail_arrives_with_envelope_and_headers(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    message_id = await send(
        sender,
        to=["ann@example.com"],
        cc=["bob@example.com"],
        bcc=["hidden@example.com"],
        replyTo=["help@example.com"],
        subject="Quarterly",
    )
    await dispatcher.drain()

    [transaction] = server.transactions
    assert transaction.mail_from == "noreply@example.com"
    assert sorted(transaction.rcpt_tos) == [
        "ann@example.com",
        "bob@example.com",
        "hidden@example.com",
    ]
    mail = transaction.message
    assert mail["To"] == "ann@example.com"
    assert mail["Cc"] == "bob@example.com"
    assert mail["Bcc"] is None
    assert b"hidden@example.com" not in transaction.data
    assert mail["Reply-To"] == "help@example.com"
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert mail["Message-ID"] == saved["messageId"]
    [attempt] = saved["attemptLog"]
    assert attempt["server"] == "relay"
    assert attempt["outcome"] == "sent"
    assert attempt["replyCode"] == 250
    assert attempt["tlsVersion"] is None
    assert {r["status"] for r in saved["recipients"]} == {"sent"}


async def test_group_goes_out_in_bcc_chunks_with_undisclosed_to(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, maxRecipientsPerMessage=50)
    group = [f"user{i:03}@example.com" for i in range(120)]
    message_id = await send(sender, recipients=group)
    await dispatcher.drain()

    transactions = server.transactions
    assert [len(t.rcpt_tos) for t in transactions] == [50, 50, 20]
    assert sorted(r for t in transactions for r in t.rcpt_tos) == group
    for transaction in transactions:
        assert transaction.message["To"] == "undisclosed-recipients:;"
        assert transaction.message["Bcc"] is None
        assert b"user0" not in transaction.data
    assert len({t.message["Message-ID"] for t in transactions}) == 1
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert len(saved["attemptLog"]) == 3


async def test_a_group_of_one_goes_in_to(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    await send(sender, recipients=[{"email": "solo@example.com", "name": "Solo"}])
    await dispatcher.drain()
    [transaction] = server.transactions
    assert transaction.rcpt_tos == ["solo@example.com"]
    assert transaction.message["To"] == "Solo <solo@example.com>"


@pytest.mark.parametrize("stage", ["MAIL", "DATA_END"])
async def test_temporary_failure_is_retried_with_the_same_message_id(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    stage: str,
) -> None:
    server = smtp_server_factory(replies={stage: "451 4.3.0 try again later"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    before = datetime.now().astimezone()
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert saved["status"] == "queued"
    assert saved["attempts"] == 1
    assert saved["attemptLog"][0]["outcome"] == "deferred"
    assert saved["attemptLog"][0]["replyCode"] == 451
    assert saved["recipients"][0]["status"] == "deferred"
    delay = datetime.fromisoformat(saved["nextAttemptAt"]) - before
    base = runtime.settings.retry_base
    assert timedelta(seconds=base * 0.75 - 1) <= delay <= timedelta(seconds=base * 1.25 + 1)

    server.replies.clear()
    await dispatcher.drain()
    assert (await record(sender, message_id))["attempts"] == 1, "not due yet: nothing sent"
    await make_due(runtime)
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert [a["number"] for a in saved["attemptLog"]] == [1, 2]
    delivered = [t for t in server.transactions if t.data]
    assert {t.message["Message-ID"] for t in delivered} == {saved["messageId"]}


async def test_permanent_failure_on_mail_fails_after_one_attempt(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "550 5.7.1 sender rejected"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "failed"
    assert saved["attempts"] == 1
    [attempt] = saved["attemptLog"]
    assert attempt["outcome"] == "failed"
    assert attempt["replyCode"] == 550
    assert attempt["errorCode"] == "EENVELOPE"


async def test_one_recipient_refused_fails_only_that_recipient(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies={"r2@example.com": "550 5.1.1 no such user"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["r1@example.com", "r2@example.com", "r3@example.com"])
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "partially_sent"
    statuses = {r["email"]: (r["status"], r["code"]) for r in saved["recipients"]}
    assert statuses == {
        "r1@example.com": ("sent", 250),
        "r2@example.com": ("rejected", 550),
        "r3@example.com": ("sent", 250),
    }
    [transaction] = server.transactions
    assert sorted(transaction.rcpt_tos) == ["r1@example.com", "r3@example.com"]


async def test_a_temporarily_refused_recipient_is_retried_alone(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies={"r2@example.com": "451 4.2.1 mailbox busy"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["r1@example.com", "r2@example.com", "r3@example.com"])
    await dispatcher.drain()
    assert (await record(sender, message_id))["status"] == "queued"
    server.rcpt_replies.clear()
    await make_due(runtime)
    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    received = [r for t in server.transactions for r in t.rcpt_tos]
    assert sorted(received) == ["r1@example.com", "r2@example.com", "r3@example.com"]
    assert server.transactions[-1].rcpt_tos == ["r2@example.com"]
    assert server.transactions[-1].message["To"] == "r1@example.com, r2@example.com, r3@example.com"


async def test_refused_credentials_are_temporary_and_mark_the_profile_failing(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(users={"alice": "right-password"})
    await add_smtp_profile(admin, server, settings={"user": "alice", "pass": "wrong-password"})
    message_id = await send(sender, to=["ann@example.com"])
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "queued"
    assert saved["attemptLog"][0]["errorCode"] == "EAUTH"
    assert server.transactions == []
    profile = (await admin.get("/api/v1/servers/relay")).json()
    assert profile["health"]["status"] == "failing"
    assert "EAUTH" in profile["health"]["error"]
    assert "wrong-password" not in str(profile)


async def test_fallback_is_used_when_the_primary_fails_before_data(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    backup = smtp_server_factory()
    await add_smtp_profile(admin, backup, name="backup")
    dead = smtp_server_factory()
    dead.stop()
    await add_smtp_profile(
        admin, dead, name="primary", fallback="backup", settings={"connectionTimeout": 2000}
    )
    message_id = await send(sender, to=["ann@example.com"], server="primary")
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert [(a["server"], a["outcome"]) for a in saved["attemptLog"]] == [
        ("primary", "deferred"),
        ("backup", "sent"),
    ]
    assert saved["attemptLog"][0]["errorCode"] == "ECONNECTION"
    assert len(backup.transactions) == 1


async def test_fallback_carries_what_the_primary_cannot(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    backup = smtp_server_factory()
    await add_smtp_profile(admin, backup, name="backup")
    no_smtputf8 = smtp_server_factory(replies={"EHLO": "502 5.5.1 EHLO not implemented"})
    await add_smtp_profile(admin, no_smtputf8, name="primary", fallback="backup")
    message_id = await send(sender, to=["josé@example.com"], server="primary")
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert [(a["server"], a["outcome"]) for a in saved["attemptLog"]] == [
        ("primary", "failed"),
        ("backup", "sent"),
    ]
    assert saved["attemptLog"][0]["errorCode"] == "EUNSUPPORTED"
    assert no_smtputf8.transactions == []
    assert [t.rcpt_tos for t in backup.transactions] == [["josé@example.com"]]


async def test_no_fallback_after_data_was_sent(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    backup = smtp_server_factory()
    await add_smtp_profile(admin, backup, name="backup")
    flaky = smtp_server_factory(replies={"DATA_END": DROP})
    await add_smtp_profile(admin, flaky, name="primary", fallback="backup")
    message_id = await send(sender, to=["ann@example.com"], server="primary")
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "queued"
    assert [a["server"] for a in saved["attemptLog"]] == ["primary"]
    assert saved["attemptLog"][0]["ambiguous"] is True
    assert backup.transactions == []
    assert dispatcher.metrics.value("postroom_ambiguous_attempts_total") == 1


async def test_messages_older_than_the_max_age_fail(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "421 4.3.2 shutting down"})
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    runtime.settings.max_message_age = 0.001
    dispatcher = Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    )
    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "failed"
    assert saved["recipients"][0]["status"] == "failed"
    assert "gave up after 1 attempts" in saved["recipients"][0]["response"]
