"""The SMTP transport against a real aiosmtpd server: envelope, replies, drops, timeouts, egress."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.egress import EgressPolicy, parse_networks
from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import (
    ConfigError,
    ConfigurationError,
    PermanentError,
    TemporaryError,
    TransportError,
)
from app.transports.smtp import SmtpConfig, SmtpTransport
from tests.smtpd import DROP, SmtpServer, make_message

pytestmark = pytest.mark.anyio


def build(server: SmtpServer, context: TransportContext, **settings: Any) -> SmtpTransport:
    return smtp.create("test", server.config(**settings), context)


async def send_failing(transport: SmtpTransport) -> TransportError:
    with pytest.raises(TransportError) as caught:
        await transport.send(make_message())
    return caught.value


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_envelope_goes_apart_from_the_headers(smtp_server, smtp_context):
    message = make_message(to=["to@example.com"], bcc=["hidden@example.com"])

    result = await build(smtp_server, smtp_context).send(message)

    [received] = smtp_server.transactions
    assert received.mail_from == "sender@example.com"
    assert received.rcpt_tos == ["to@example.com", "hidden@example.com"]
    assert received.data == message.mime
    assert received.message["To"] == "to@example.com"
    assert b"hidden@example.com" not in received.data
    assert set(result.recipients) == {"to@example.com", "hidden@example.com"}
    assert {r.status for r in result.recipients.values()} == {"sent"}
    assert result.reply_code == 250
    assert result.provider_id == "2.0.0 OK queued as Q1x1"
    assert result.recipients["to@example.com"].message == result.provider_id
    assert result.tls_version is None
    [session] = smtp_server.sessions
    assert session.verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert f"SIZE={len(message.mime)}" in session.commands[1]


async def test_ehlo_name_is_the_configured_name(smtp_server, smtp_context):
    await build(smtp_server, smtp_context, name="client.example.com").send(make_message())

    assert smtp_server.sessions[0].commands[0] == "EHLO client.example.com"


async def test_helo_when_the_server_refuses_ehlo(smtp_server_factory, smtp_context):
    server = smtp_server_factory(replies={"EHLO": "502 5.5.1 EHLO not implemented"})

    result = await build(server, smtp_context).send(make_message())

    assert result.recipients["rcpt@example.com"].status == "sent"
    assert server.sessions[0].verbs[:3] == ["EHLO", "HELO", "MAIL"]


async def test_a_host_name_is_resolved(smtp_server, smtp_context):
    config = SmtpConfig(host="localhost", port=smtp_server.port)

    result = await smtp.create("test", config, smtp_context).send(make_message())

    assert result.reply_code == 250


@pytest.mark.parametrize(
    "body",
    [
        b"x\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<evil@example.com>\r\n",
        b"a\r\n.\nb\r\n",
        b"a\r\n.\r\nb\r\n",
        b".leading dot\r\n..two dots\r\n.\r\n",
    ],
)
async def test_end_of_data_lookalikes_stay_in_the_body(smtp_server, smtp_context, body):
    message = dataclasses.replace(make_message(), mime=b"Subject: dots\r\n\r\n" + body)

    await build(smtp_server, smtp_context).send(message)

    [received] = smtp_server.transactions
    assert received.rcpt_tos == ["rcpt@example.com"]
    assert received.data == message.mime.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_non_ascii_addresses_use_smtputf8(smtp_server, smtp_context):
    message = dataclasses.replace(make_message(), recipients=("josé@example.com",))

    await build(smtp_server, smtp_context).send(message)

    [received] = smtp_server.transactions
    assert received.rcpt_tos == ["josé@example.com"]
    assert "SMTPUTF8" in received.mail_options


async def test_eight_bit_content_is_declared(smtp_server, smtp_context):
    message = dataclasses.replace(make_message(), mime="Subject: x\r\n\r\ncafé\r\n".encode())

    await build(smtp_server, smtp_context).send(message)

    assert "BODY=8BITMIME" in smtp_server.transactions[0].mail_options


@pytest.mark.parametrize(
    ("recipients", "envelope_from"),
    [((), "sender@example.com"), (("a@example.com\r\nRCPT TO:<b@example.com>",), "s@x.org")],
)
async def test_a_bad_envelope_fails_before_connecting(
    smtp_server, smtp_context, recipients, envelope_from
):
    message = dataclasses.replace(
        make_message(), recipients=recipients, envelope_from=envelope_from
    )

    with pytest.raises(PermanentError) as caught:
        await build(smtp_server, smtp_context).send(message)

    assert caught.value.code == "EENVELOPE"
    assert smtp_server.sessions == []


@pytest.mark.parametrize(
    ("stage", "reply", "error", "code", "before_data"),
    [
        ("greeting", "421 4.3.2 busy", TemporaryError, "EPROTOCOL", True),
        ("greeting", "554 5.7.1 no service", TemporaryError, "EPROTOCOL", True),
        ("EHLO", "421 4.3.2 shutting down", TemporaryError, "EPROTOCOL", True),
        ("MAIL", "421 4.3.2 closing", TemporaryError, "EENVELOPE", True),
        ("MAIL", "450 4.2.0 mailbox busy", TemporaryError, "EENVELOPE", True),
        ("MAIL", "451 4.3.0 local error", TemporaryError, "EENVELOPE", True),
        ("MAIL", "452 4.3.1 no storage", TemporaryError, "EENVELOPE", True),
        ("MAIL", "550 5.7.1 sender refused", PermanentError, "EENVELOPE", True),
        ("MAIL", "553 5.1.8 bad sender domain", PermanentError, "EENVELOPE", True),
        ("RCPT", "421 4.3.2 closing", TemporaryError, "EENVELOPE", True),
        ("DATA", "451 4.3.0 try later", TemporaryError, "EMESSAGE", True),
        ("DATA", "554 5.5.1 no valid recipients", PermanentError, "EMESSAGE", True),
        ("DATA_END", "451 4.3.0 queue full", TemporaryError, "EMESSAGE", False),
        ("DATA_END", "452 4.3.1 no storage", TemporaryError, "EMESSAGE", False),
        ("DATA_END", "550 5.7.1 content refused", PermanentError, "EMESSAGE", False),
        ("DATA_END", "552 5.3.4 too big", PermanentError, "EMESSAGE", False),
        ("DATA_END", "554 5.7.1 spam", PermanentError, "EMESSAGE", False),
    ],
)
async def test_reply_codes_map_to_temporary_or_permanent(
    smtp_server_factory, smtp_context, stage, reply, error, code, before_data
):
    server = smtp_server_factory(replies={stage: reply})

    err = await send_failing(build(server, smtp_context))

    assert type(err) is error
    assert err.code == code
    assert err.reply_code == int(reply[:3])
    assert err.reply == reply[4:]
    assert err.before_data is before_data
    assert err.ambiguous is False


@pytest.mark.parametrize(
    ("reply", "status"), [("450 4.2.1 try later", "deferred"), ("550 5.1.1 unknown", "rejected")]
)
async def test_every_recipient_refused_is_a_result_not_an_error(
    smtp_server_factory, smtp_context, reply, status
):
    server = smtp_server_factory(replies={"RCPT": reply})

    result = await build(server, smtp_context).send(make_message(to=["a@example.com", "b@x.org"]))

    assert {r: (v.status, v.code) for r, v in result.recipients.items()} == {
        "a@example.com": (status, int(reply[:3])),
        "b@x.org": (status, int(reply[:3])),
    }
    assert result.provider_id is None
    assert server.transactions == []
    assert server.sessions[0].verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET", "QUIT"]


@pytest.mark.parametrize(
    ("reply", "status"), [("550 5.1.1 no such user", "rejected"), ("451 4.2.1 later", "deferred")]
)
async def test_one_refused_recipient_of_three(smtp_server_factory, smtp_context, reply, status):
    recipients = ["r1@example.com", "r2@example.com", "r3@example.com"]
    server = smtp_server_factory(rcpt_replies={"r2@example.com": reply})

    result = await build(server, smtp_context).send(make_message(to=recipients))

    assert [result.recipients[r].status for r in recipients] == ["sent", status, "sent"]
    assert result.recipients["r2@example.com"].code == int(reply[:3])
    assert result.recipients["r2@example.com"].message == reply[4:]
    [received] = server.transactions
    assert received.rcpt_tos == ["r1@example.com", "r3@example.com"]


async def test_drop_after_the_final_dot_is_ambiguous(smtp_server_factory, smtp_context):
    server = smtp_server_factory(replies={"DATA_END": DROP})

    err = await send_failing(build(server, smtp_context))

    assert type(err) is TemporaryError
    assert (err.code, err.ambiguous, err.before_data) == ("ECONNECTION", True, False)
    assert len(server.transactions) == 1


async def test_drop_in_the_middle_of_the_content_is_not_ambiguous(
    smtp_server_factory, smtp_context
):
    server = smtp_server_factory(drop_mid_data_after=1024)
    content = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 16_000
    message = dataclasses.replace(make_message(), mime=content)

    with pytest.raises(TemporaryError) as caught:
        await build(server, smtp_context).send(message)

    err = caught.value
    assert (err.code, err.ambiguous, err.before_data) == ("ECONNECTION", False, False)
    assert server.transactions == []


@pytest.mark.parametrize("stage", ["greeting", "EHLO", "MAIL", "RCPT", "DATA"])
async def test_drop_before_the_content_is_safe_to_retry_elsewhere(
    smtp_server_factory, smtp_context, stage
):
    server = smtp_server_factory(replies={stage: DROP})

    err = await send_failing(build(server, smtp_context))

    assert type(err) is TemporaryError
    assert (err.code, err.ambiguous, err.before_data) == ("ECONNECTION", False, True)


async def test_greeting_slower_than_greeting_timeout(smtp_server_factory, smtp_context):
    server = smtp_server_factory(greeting_delay=5.0)
    transport = build(server, smtp_context, greeting_timeout=300)
    started = time.monotonic()

    err = await send_failing(transport)

    assert 0.25 < time.monotonic() - started < 3.0  # the stall is 5 s; slack for a loaded CI
    assert (err.code, err.before_data) == ("ETIMEDOUT", True)
    assert type(err) is TemporaryError


@pytest.mark.parametrize(
    ("stage", "before_data", "ambiguous"), [("MAIL", True, False), ("DATA_END", False, True)]
)
async def test_a_reply_slower_than_socket_timeout(
    smtp_server_factory, smtp_context, stage, before_data, ambiguous
):
    server = smtp_server_factory(delays={stage: 5.0})
    started = time.monotonic()

    err = await send_failing(build(server, smtp_context, socket_timeout=300))

    assert 0.25 < time.monotonic() - started < 3.0  # the stall is 5 s; slack for a loaded CI
    assert (err.code, err.before_data, err.ambiguous) == ("ETIMEDOUT", before_data, ambiguous)


async def test_connection_refused(smtp_context):
    config = SmtpConfig(host="127.0.0.1", port=free_port())

    err = await send_failing(smtp.create("test", config, smtp_context))

    assert type(err) is TemporaryError
    assert (err.code, err.before_data) == ("ECONNECTION", True)


async def test_unknown_host(smtp_context):
    config = SmtpConfig(host="no-such-host.invalid", connection_timeout=3000)

    err = await send_failing(smtp.create("test", config, smtp_context))

    assert isinstance(err, TemporaryError)
    assert err.code in {"EDNS", "ETIMEDOUT"}
    # a name that does not exist is the profile's to fix (health); a slow resolver is not
    assert isinstance(err, ConfigurationError) == (err.code == "EDNS")


@pytest.fixture
def unresponsive_port() -> Iterator[int]:
    """A port whose accept queue is full: a new connection hangs in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
    yield int(listener.getsockname()[1])
    for sock in (*fillers, listener):
        sock.close()


async def test_connection_timeout(smtp_context, unresponsive_port):
    config = SmtpConfig(host="127.0.0.1", port=unresponsive_port, connection_timeout=300)
    started = time.monotonic()

    err = await send_failing(smtp.create("test", config, smtp_context))

    assert 0.25 < time.monotonic() - started < 3.0  # unanswered, it never ends; slack for CI
    assert (err.code, err.before_data) == ("ETIMEDOUT", True)


async def test_egress_policy_is_checked_before_connecting(smtp_server, smtp_context):
    context = dataclasses.replace(
        smtp_context, egress=EgressPolicy(deny=parse_networks("127.0.0.0/8"))
    )

    with pytest.raises(ConfigError) as caught:
        await build(smtp_server, context).send(make_message())

    assert (caught.value.code, caught.value.field) == ("EPOLICY", "host")
    assert smtp_server.sessions == []


def test_xoauth2_needs_a_user():
    oauth2 = {"tokenUrl": "https://login.example.test/token", "clientId": "app"}

    with pytest.raises(ValueError, match="needs a user"):
        SmtpConfig.model_validate({"authMethod": "xoauth2", "oauth2": oauth2})
