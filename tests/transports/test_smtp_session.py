"""Postroom's own SMTP session on the wire, against a scripted server that records every segment
it reads: what goes in one write, BDAT when CHUNKING is offered, multi-line and split replies, a
server that closes or stalls mid-transaction, and one that says goodbye while idle."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from app.transports import smtp
from app.transports.base import TransportContext
from app.transports.errors import PermanentError, TemporaryError, Throttled, TransportError
from app.transports.smtp import SmtpTransport
from app.transports.smtp.transaction import CHUNK_BYTES
from tests.smtpd import make_message
from tests.transports._scripted_smtp import DROP, STALL, ScriptedServer

pytestmark = pytest.mark.anyio

TO = ("a@example.com", "b@example.com", "c@example.com")
PIPELINING = ("PIPELINING", "8BITMIME", "SIZE 10000000")
PIPELINING_AND_CHUNKING = ("PIPELINING", "CHUNKING", "8BITMIME", "SIZE 10000000")


def build(server: ScriptedServer, context: TransportContext, **settings: Any) -> SmtpTransport:
    return smtp.create("scripted", server.config(**settings), context)


def content_of(mime: bytes) -> bytes:
    return mime.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def send_failing(server: ScriptedServer, context: TransportContext, **settings: Any) -> Any:
    transport = build(server, context, **settings)
    with pytest.raises(TransportError) as caught:
        await transport.send(make_message(to=TO))
    await transport.aclose()
    return caught.value


async def test_with_pipelining_mail_every_rcpt_and_data_are_one_write(smtp_context):
    async with ScriptedServer(extensions=PIPELINING) as server:
        message = make_message(to=TO)
        result = await build(server, smtp_context).send(message)

    [envelope] = server.segments_with(b"MAIL FROM")
    size = len(content_of(message.mime))
    assert envelope == (
        f"MAIL FROM:<sender@example.com> SIZE={size}\r\n".encode()
        + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in TO)
        + b"DATA\r\n"
    )
    assert {r.status for r in result.recipients.values()} == {"sent"}
    [received] = server.messages
    assert received.rcpt_tos == list(TO)
    assert received.content == content_of(message.mime)


async def test_without_pipelining_each_command_is_a_write_of_its_own(smtp_context):
    async with ScriptedServer(extensions=("8BITMIME",)) as server:
        await build(server, smtp_context).send(make_message(to=TO))

    commands = [s for s in server.segments if s[:4] in (b"MAIL", b"RCPT", b"DATA")]
    assert [s.split(b":")[0].split(b"\r")[0] for s in commands] == [
        b"MAIL FROM",
        *[b"RCPT TO"] * 3,
        b"DATA",
    ]
    assert all(s.count(b"\r\n") == 1 for s in commands)


@pytest.mark.parametrize("body", [b"Hello.\r\n", b".leading dot\r\n..two\r\n.\r\nend\r\n"])
async def test_with_chunking_the_content_goes_by_one_bdat_as_it_is(smtp_context, body):
    message = dataclasses.replace(make_message(to=TO), mime=b"Subject: x\r\n\r\n" + body)
    async with ScriptedServer(extensions=PIPELINING_AND_CHUNKING) as server:
        result = await build(server, smtp_context).send(message)

    [received] = server.messages
    assert received.content == message.mime
    assert "DATA" not in server.commands
    [envelope] = server.segments_with(b"MAIL FROM")
    assert envelope.endswith(b"RCPT TO:<c@example.com>\r\n"), "no DATA in the envelope"
    [bdat] = server.segments_with(b"BDAT")
    assert bdat == f"BDAT {len(message.mime)} LAST\r\n".encode() + message.mime
    assert (result.reply_code, result.provider_id) == (250, "2.0.0 Ok: queued as Q1")
    assert {r.status for r in result.recipients.values()} == {"sent"}


@pytest.mark.parametrize("extensions", [PIPELINING_AND_CHUNKING, ("CHUNKING",)])
async def test_a_large_message_goes_in_64_kib_chunks(smtp_context, extensions):
    body = b"".join(b"line %06d %s\r\n" % (i, b"x" * 60) for i in range(4000))
    message = dataclasses.replace(make_message(), mime=b"Subject: big\r\n\r\n" + body)
    size = len(message.mime)
    async with ScriptedServer(extensions=extensions) as server:
        result = await build(server, smtp_context).send(message)

    [received] = server.messages
    assert received.content == message.mime
    chunks = [c for c in server.commands if c.startswith("BDAT")]
    whole, rest = divmod(size, CHUNK_BYTES)
    assert chunks == [f"BDAT {CHUNK_BYTES}"] * whole + [f"BDAT {rest} LAST"]
    assert result.reply_code == 250


async def test_a_refused_bdat_is_the_content_refused(smtp_context):
    async with ScriptedServer(replies={"BDAT_LAST": "552 5.3.4 message too big"}) as server:
        err = await send_failing(server, smtp_context)

    assert type(err) is PermanentError
    assert (err.code, err.reply_code, err.before_data, err.ambiguous) == (
        "EMESSAGE",
        552,
        False,
        False,
    )


async def test_with_chunking_every_recipient_refused_sends_no_content(smtp_context):
    refused = "550-5.1.1 no such user\r\n550 5.1.1 see https://example.com/550"
    async with ScriptedServer(replies={"RCPT": refused}) as server:
        transport = build(server, smtp_context, pool=True)
        result = await transport.send(make_message(to=TO))
        await transport.aclose()

    assert {(r.status, r.code) for r in result.recipients.values()} == {("rejected", 550)}
    assert result.recipients["a@example.com"].message == (
        "5.1.1 no such user\n5.1.1 see https://example.com/550"
    )
    assert [c.split(" ")[0] for c in server.commands] == [
        *("EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "RSET", "QUIT")
    ]


async def test_multi_line_and_split_replies_are_read_whole(smtp_context):
    async with ScriptedServer(
        extensions=PIPELINING, greeting="220-scripted.test\r\n220 ESMTP ready", split_replies=True
    ) as server:
        transport = build(server, smtp_context, pool=True)
        report = await transport.verify()
        results = [await transport.send(make_message(to=TO)) for _ in range(3)]
        await transport.aclose()

    assert report.ok
    steps = {step.name: step for step in report.steps}
    assert steps["greeting"].detail == "220 scripted.test\nESMTP ready"
    assert steps["ehlo"].data["capabilities"] == list(PIPELINING)
    assert [r.provider_id for r in results] == [f"2.0.0 Ok: queued as Q{i}" for i in (1, 2, 3)]
    assert len(server.messages) == 3


async def test_the_old_auth_equals_form_is_read_as_auth(smtp_context):
    async with ScriptedServer(extensions=("AUTH=LOGIN PLAIN", "PIPELINING")) as server:
        report = await build(server, smtp_context).verify()

    [ehlo] = [step for step in report.steps if step.name == "ehlo"]
    assert ehlo.data["capabilities"] == ["AUTH LOGIN PLAIN", "PIPELINING"]


@pytest.mark.parametrize(
    ("stage", "extensions", "before_data", "ambiguous"),
    [
        ("MAIL", PIPELINING, True, False),
        ("RCPT", ("8BITMIME",), True, False),
        ("DATA", PIPELINING, True, False),
        ("DATA_END", PIPELINING, False, True),
        ("BDAT_LAST", PIPELINING_AND_CHUNKING, False, True),
    ],
)
async def test_a_server_closing_mid_transaction(
    smtp_context, stage, extensions, before_data, ambiguous
):
    async with ScriptedServer(extensions=extensions, replies={stage: DROP}) as server:
        err = await send_failing(server, smtp_context)

    assert type(err) is TemporaryError
    assert (err.code, err.before_data, err.ambiguous) == ("ECONNECTION", before_data, ambiguous)


async def test_a_421_to_a_pipelined_rcpt_ends_the_transaction_at_once(smtp_context):
    """The server closes after its 421: the 421 is the error, not the closed connection."""
    async with ScriptedServer(extensions=PIPELINING) as server:
        server.replies["RCPT"] = "421 4.7.0 Try again later, closing connection."
        err = await send_failing(server, smtp_context)

    assert type(err) is Throttled
    assert (err.reply_code, err.before_data) == (421, True)
    assert server.messages == []


@pytest.mark.parametrize(
    ("stage", "extensions", "before_data", "ambiguous"),
    [
        ("greeting", PIPELINING, True, False),
        ("MAIL", PIPELINING, True, False),
        ("DATA_END", PIPELINING, False, True),
        ("BDAT_LAST", PIPELINING_AND_CHUNKING, False, True),
    ],
)
async def test_a_server_that_stops_answering(
    smtp_context, stage, extensions, before_data, ambiguous
):
    async with ScriptedServer(extensions=extensions, replies={stage: STALL}) as server:
        started = asyncio.get_running_loop().time()
        err = await send_failing(server, smtp_context, socketTimeout=300, greetingTimeout=300)
        elapsed = asyncio.get_running_loop().time() - started

    assert 0.25 < elapsed < 3.0  # the stall is far longer; slack for a loaded CI
    assert (err.code, err.before_data, err.ambiguous) == ("ETIMEDOUT", before_data, ambiguous)


async def test_a_reply_that_is_not_smtp(smtp_context):
    async with ScriptedServer(extensions=PIPELINING, replies={"MAIL": "hello there"}) as server:
        err = await send_failing(server, smtp_context)

    assert type(err) is TemporaryError
    assert (err.code, err.before_data) == ("EPROTOCOL", True)
    assert "not an SMTP reply" in err.message


async def test_a_pooled_connection_the_server_said_goodbye_on_is_not_reused(smtp_context):
    """A server's "421 idle timeout" comes unasked before it closes: that connection is not
    lent again, the next message goes over a new one."""
    async with ScriptedServer(after_message="421 4.4.2 scripted.test timeout exceeded") as server:
        transport = build(server, smtp_context, pool=True)
        first = await transport.send(make_message())
        await asyncio.sleep(0.1)
        second = await transport.send(make_message())
        await transport.aclose()

    assert (first.reply_code, second.reply_code) == (250, 250)
    assert server.sessions == 2
