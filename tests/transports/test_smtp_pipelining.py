"""PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write when the server offers it, their
replies read in order, and every outcome the same as without it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import PermanentError, TemporaryError
from app.transports.smtp import SmtpTransport
from app.transports.smtp.wire import Wire
from tests.smtpd import SmtpServer, StartServer, make_message

pytestmark = pytest.mark.anyio

TO = ("a@example.com", "b@example.com")
BCC = ("c@example.com",)


def build(server: SmtpServer, context: TransportContext, **settings: Any) -> SmtpTransport:
    return smtp.create("test", server.config(**settings), context)


def transaction_commands(server: SmtpServer) -> tuple[list[str], list[bytes]]:
    """The MAIL, RCPT and DATA commands of the first session, and what was waiting behind each."""
    [session] = server.sessions
    picked = [
        (command, waiting)
        for command, waiting in zip(session.commands, session.waiting, strict=True)
        if command.split(" ", 1)[0] in ("MAIL", "RCPT", "DATA")
    ]
    return [command for command, _ in picked], [waiting for _, waiting in picked]


async def test_the_envelope_goes_in_one_write_when_the_server_offers_pipelining(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(pipelining=True)
    transport = build(server, smtp_context)

    result = await transport.send(make_message(to=TO, bcc=BCC))

    assert {r: s.status for r, s in result.recipients.items()} == dict.fromkeys(TO + BCC, "sent")
    [transaction] = server.transactions
    assert transaction.rcpt_tos == [*TO, *BCC]
    assert b"Hello there." in transaction.data
    commands, waiting = transaction_commands(server)
    assert commands == [
        "MAIL FROM:<sender@example.com> SIZE=" + commands[0].rsplit("=", 1)[1],
        "RCPT TO:<a@example.com>",
        "RCPT TO:<b@example.com>",
        "RCPT TO:<c@example.com>",
        "DATA",
    ]
    assert waiting[0] == (
        b"RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
    )
    await transport.aclose()


async def test_without_pipelining_each_command_waits_for_its_reply(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(pipelining=False)
    transport = build(server, smtp_context)

    await transport.send(make_message(to=TO))

    commands, waiting = transaction_commands(server)
    assert [c.split(" ", 1)[0] for c in commands] == ["MAIL", "RCPT", "RCPT", "DATA"]
    assert waiting == [b"", b"", b"", b""]
    await transport.aclose()


async def test_a_pooled_connection_pipelines_message_after_message(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(pipelining=True)
    transport = build(server, smtp_context, pool=True, max_connections=1)

    results = await asyncio.gather(
        *(transport.send(make_message(to=(f"r{i}@example.com",))) for i in range(20))
    )

    assert [r.recipients[f"r{i}@example.com"].status for i, r in enumerate(results)] == [
        "sent"
    ] * 20
    assert sorted(t.rcpt_tos[0] for t in server.transactions) == sorted(
        f"r{i}@example.com" for i in range(20)
    )
    [session] = server.sessions
    assert session.transactions == 20
    await transport.aclose()


async def test_one_refused_rcpt_fails_that_recipient_only(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(
        pipelining=True,
        rcpt_replies={"b@example.com": "550 5.1.1 no such user", "c@example.com": "452 full"},
    )
    transport = build(server, smtp_context)

    result = await transport.send(make_message(to=TO, bcc=BCC))

    statuses = {r: (s.status, s.code) for r, s in result.recipients.items()}
    assert statuses["a@example.com"] == ("sent", 250)
    assert statuses["b@example.com"] == ("rejected", 550)
    assert statuses["c@example.com"] == ("deferred", 452)
    [transaction] = server.transactions
    assert transaction.rcpt_tos == ["a@example.com"]
    await transport.aclose()


async def test_every_rcpt_refused_sends_no_content_and_keeps_the_connection_usable(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(
        pipelining=True, rcpt_replies={"a@example.com": "550 5.1.1 no such user"}
    )
    transport = build(server, smtp_context, pool=True, max_connections=1)

    refused = await transport.send(make_message(to=("a@example.com",)))
    accepted = await transport.send(make_message(to=("b@example.com",)))

    assert refused.recipients["a@example.com"].status == "rejected"
    assert accepted.recipients["b@example.com"].status == "sent"
    assert [t.rcpt_tos for t in server.transactions] == [["b@example.com"]]
    [session] = server.sessions
    assert "RSET" in session.verbs
    await transport.aclose()


async def test_a_refused_mail_from_is_permanent_and_the_next_send_still_goes(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(pipelining=True, replies={"MAIL": "550 5.7.1 sender refused"})
    transport = build(server, smtp_context, pool=True, max_connections=1)

    with pytest.raises(PermanentError) as caught:
        await transport.send(make_message())
    assert caught.value.code == "EENVELOPE"
    assert caught.value.reply_code == 550
    assert caught.value.before_data

    del server.replies["MAIL"]
    result = await transport.send(make_message())
    assert result.recipients["rcpt@example.com"].status == "sent"
    assert len(server.transactions) == 1
    await transport.aclose()


async def test_a_421_to_a_rcpt_is_temporary_for_the_whole_message(
    smtp_server_factory: StartServer, smtp_context: TransportContext
) -> None:
    server = smtp_server_factory(
        pipelining=True, rcpt_replies={"b@example.com": "421 4.3.2 shutting down"}
    )
    transport = build(server, smtp_context)

    with pytest.raises(TemporaryError) as caught:
        await transport.send(make_message(to=TO))

    assert caught.value.reply_code == 421
    assert caught.value.before_data
    assert server.transactions == []
    await server.wait_until(lambda: server.sessions[0].closed)
    assert "QUIT" not in server.sessions[0].verbs
    await transport.aclose()


async def test_replies_that_arrive_together_are_read_one_by_one_in_order() -> None:
    """Several replies in one read, and a reply arriving while the one before waits to be
    picked up: each is kept and read in turn."""
    wire = Wire()
    wire.connection_made(_Transport())

    wire.data_received(b"250 2.1.0 sender ok\r\n250 2.1.5 rcpt ok\r\n")
    wire.data_received(b"354 go ahead\r\n")
    replies = [await wire.reply(1) for _ in range(3)]
    fourth = asyncio.ensure_future(wire.reply(1))
    await asyncio.sleep(0)
    wire.data_received(b"250-multi\r\n")
    wire.data_received(b"250 line\r\n")

    assert [(r.code, r.message) for r in replies] == [
        (250, "2.1.0 sender ok"),
        (250, "2.1.5 rcpt ok"),
        (354, "go ahead"),
    ]
    assert (await fourth) == (250, "multi\nline")


class _Transport(asyncio.Transport):
    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
