"""One message on a greeted session: MAIL, RCPT for each recipient, then the content.

When the server offers PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one write and their
replies are read after it: one round trip for the envelope instead of one each. When it offers
CHUNKING (RFC 3030) the content goes by BDAT, as it is (no dot-stuffing, no final "."): one
`BDAT <n> LAST` for a message up to 64 KiB, else chunks of 64 KiB (pipelined too when offered).

Domains go in A-labels (IDNA); an address with a non-ASCII local part needs SMTPUTF8, and a
server without it fails that recipient only. When that is every recipient (or the sender),
nothing is sent: UnsupportedFeature, so the profile's fallback may carry it.
"""

from __future__ import annotations

from app.schemas import a_labels
from app.transports.base import OutgoingMessage
from app.transports.errors import TransportError
from app.transports.result import RecipientResult, SendResult
from app.transports.smtp.client import Client
from app.transports.smtp.envelope import (
    crlf_content,
    dot_stuffed,
    mail_options,
    needing_smtputf8,
    refusal,
)
from app.transports.smtp.translate import Tracker
from app.transports.smtp.wire import Reply, ReplyError, SmtpError

CHUNK_BYTES = 64 * 1024
"""The content is written (and BDAT sends it) in chunks of this size."""
_ACCEPTED = (250, 251)


async def deliver(
    client: Client, tracker: Tracker, message: OutgoingMessage, transport: str
) -> SendResult:
    """MAIL, RCPT for each recipient, DATA or BDAT: a status per recipient."""
    phase = tracker.phase
    recipients = list(dict.fromkeys(message.recipients))
    wire = {recipient: a_labels(recipient) for recipient in recipients}
    sender = a_labels(message.envelope_from)
    content = crlf_content(message.mime)
    extensions = client.extensions
    chunking = "chunking" in extensions
    with phase("mail"):
        unsendable = needing_smtputf8(sender, wire, extensions, transport)
        targets = list(dict.fromkeys(wire[r] for r in recipients if r not in unsendable))
        parameters = mail_options(sender, targets, content, extensions)
        encoding = "utf-8" if "SMTPUTF8" in parameters else "ascii"
        mail = b" ".join(
            [b"MAIL FROM:<" + sender.encode(encoding) + b">"]
            + [parameter.encode("ascii") for parameter in parameters]
        )
        rcpts = [b"RCPT TO:<" + target.encode(encoding) + b">" for target in targets]
    if "pipelining" in extensions:
        refused, data_reply = await _pipelined_envelope(
            client, tracker, mail, rcpts, targets, chunking
        )
    else:
        refused, data_reply = await _envelope(client, tracker, mail, rcpts, targets), None
    if len(refused) == len(targets):
        await _reset(client)
        return SendResult(
            recipients={r: unsendable.get(r) or refused[wire[r]] for r in recipients},
            tls_version=tracker.tls_version,
        )
    try:
        if chunking:
            reply = await _bdat(client, tracker, content, "pipelining" in extensions)
        else:
            reply = await _data(client, tracker, dot_stuffed(content), data_reply)
    except TransportError as err:
        if err.reply_code is None:
            client.wire.abort()
        raise
    except BaseException:
        client.wire.abort()
        raise
    sent = RecipientResult("sent", reply.code, reply.message)
    return SendResult(
        recipients={r: unsendable.get(r) or refused.get(wire[r], sent) for r in recipients},
        provider_id=reply.message,
        reply_code=reply.code,
        tls_version=tracker.tls_version,
    )


async def _envelope(
    client: Client, tracker: Tracker, mail: bytes, rcpts: list[bytes], targets: list[str]
) -> dict[str, RecipientResult]:
    """MAIL, then RCPT for each recipient, each awaiting its reply; the refused recipients."""
    phase = tracker.phase
    with phase("mail"):
        await client.command(mail, expect=250)
    refused: dict[str, RecipientResult] = {}
    for target, rcpt in zip(targets, rcpts, strict=True):
        with phase("rcpt"):
            reply = await client.command(rcpt)
            if reply.code not in _ACCEPTED:
                if reply.code == 421 or client.wire.closed:
                    raise ReplyError(reply)
                refused[target] = refusal(reply.code, reply.message)
    return refused


async def _pipelined_envelope(
    client: Client,
    tracker: Tracker,
    mail: bytes,
    rcpts: list[bytes],
    targets: list[str],
    chunking: bool,
) -> tuple[dict[str, RecipientResult], Reply | None]:
    """MAIL, every RCPT and (without CHUNKING) DATA in one write; the refused recipients and
    DATA's reply. A 421 ends it at once: the server closes and answers nothing more."""
    phase = tracker.phase
    with phase("mail"):
        client.send(mail, *rcpts, *(() if chunking else (b"DATA",)))
        mail_reply = _closing_raises(await client.reply(mail))
    replies = []
    for rcpt in rcpts:
        with phase("rcpt"):
            replies.append(_closing_raises(await client.reply(rcpt)))
    data_reply = None
    if not chunking:
        with phase("data"):
            data_reply = _closing_raises(await client.reply(b"DATA"))
    accepted = mail_reply.code == 250 and any(reply.code in _ACCEPTED for reply in replies)
    if data_reply is not None and data_reply.code == 354 and not accepted:
        client.wire.abort()  # the server wants content for no recipient: end it here
    if mail_reply.code != 250:
        with phase("mail"):
            raise ReplyError(mail_reply)
    return {
        target: refusal(reply.code, reply.message)
        for target, reply in zip(targets, replies, strict=True)
        if reply.code not in _ACCEPTED
    }, data_reply


def _closing_raises(reply: Reply) -> Reply:
    if reply.code == 421:
        raise ReplyError(reply)
    return reply


async def _data(client: Client, tracker: Tracker, content: bytes, reply: Reply | None) -> Reply:
    """DATA (unless `reply` is its answer already), the dot-stuffed content and the final "."."""
    phase = tracker.phase
    with phase("data"):
        if reply is None:
            reply = await client.command(b"DATA")
        if reply.code != 354:
            raise ReplyError(reply)
    with phase("body"):
        # Written chunk by chunk, each drained, so that a connection lost during the content is
        # told apart from one lost after the final "." (the ambiguous case); the last chunk goes
        # with the "." (one write: small messages are one chunk). A reply that comes early (a
        # 5xx mid-content) is kept, and read as the final one.
        last = await _write_chunks(client, content)
        client.wire.write(last + b".\r\n")
        _note(client, content)
    with phase("end-of-data"):
        return _expect_250(await client.reply(b"."))


async def _bdat(client: Client, tracker: Tracker, content: bytes, pipelining: bool) -> Reply:
    """The content in BDAT chunks, the last one `BDAT <n> LAST`: each chunk's reply is read
    before the next is sent, or with PIPELINING all of them after the last."""
    phase, wire = tracker.phase, client.wire
    pending: list[bytes] = []
    with phase("body"):
        starts = range(0, len(content), CHUNK_BYTES)
        for start in starts[:-1]:
            command = b"BDAT %d" % CHUNK_BYTES
            wire.write(command + b"\r\n")
            wire.write(content[start : start + CHUNK_BYTES])
            await wire.drain(client.timeout)
            if pipelining:
                pending.append(command)
            else:
                _expect_250(await client.reply(command))
        last = content[starts[-1] :]
        command = b"BDAT %d LAST" % len(last)
        wire.write(command + b"\r\n" + last)
        _note(client, content)
    with phase("end-of-data"):
        replies = [await client.reply(chunk) for chunk in pending]
        reply = await client.reply(command)
        for each in (*replies, reply):
            _expect_250(each)
        return reply


async def _write_chunks(client: Client, content: bytes) -> bytes:
    """Write all but the last chunk of the content, each drained within socketTimeout; the last
    chunk, to be written by the caller with what ends it."""
    wire = client.wire
    starts = range(0, len(content), CHUNK_BYTES)
    for start in starts[:-1]:
        wire.write(content[start : start + CHUNK_BYTES])
        await wire.drain(client.timeout)
    return content[starts[-1] :]


def _expect_250(reply: Reply) -> Reply:
    if reply.code != 250:
        raise ReplyError(reply)
    return reply


def _note(client: Client, content: bytes) -> None:
    if client.transcript is not None:
        client.transcript.note(f"<message content, {len(content)} bytes>")


async def _reset(client: Client) -> None:
    """RSET after a transaction that sent no content; a connection that fails it is closed."""
    try:
        await client.rset()
    except (SmtpError, OSError):
        client.wire.abort()
