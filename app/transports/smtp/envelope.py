"""What one message puts on the wire, decided without I/O from the message and the server's ESMTP
extensions: envelope checks, the content's line endings and dot-stuffing, the recipients a server
without SMTPUTF8 cannot take, MAIL FROM's parameters, and what a refused RCPT means."""

from __future__ import annotations

import re
from collections.abc import Container

from app.transports.base import OutgoingMessage
from app.transports.errors import PermanentError, UnsupportedFeature
from app.transports.result import RecipientResult, RecipientStatus
from app.transports.smtp.translate import NEEDS_SMTPUTF8

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_NOT_IN_ENVELOPE = re.compile("[\r\n\0<>]")


def check_envelope(message: OutgoingMessage) -> None:
    """Refuse, before connecting, an envelope that no server could take."""
    if not message.recipients:
        raise PermanentError("the message has no recipients", code="EENVELOPE", before_data=True)
    for address in (message.envelope_from, *message.recipients):
        if _NOT_IN_ENVELOPE.search(address):
            raise PermanentError(
                f"invalid envelope address {address!r}", code="EENVELOPE", before_data=True
            )


def crlf_content(mime: bytes) -> bytes:
    """The content with CRLF line endings, ending in one."""
    content = _LINE_ENDINGS.sub(b"\r\n", mime)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def dot_stuffed(content: bytes) -> bytes:
    """RFC 5321 4.5.2: a line that starts with "." gets another one."""
    return _LEADING_DOT.sub(b"..", content)


def needing_smtputf8(
    sender: str, wire: dict[str, str], extensions: Container[str], transport: str
) -> dict[str, RecipientResult]:
    """The recipients this server cannot take (a non-ASCII local part, no SMTPUTF8), failed;
    raises UnsupportedFeature when it is the sender's address or every recipient's."""
    if "smtputf8" in extensions:
        return {}
    if not sender.isascii():
        raise UnsupportedFeature(
            f"the non-ASCII sender address {sender} (the server does not offer SMTPUTF8)",
            transport,
        )
    unsendable = {
        recipient: RecipientResult("failed", None, NEEDS_SMTPUTF8)
        for recipient, address in wire.items()
        if not address.isascii()
    }
    if len(unsendable) == len(wire):
        raise UnsupportedFeature(
            "non-ASCII addresses (the server does not offer SMTPUTF8)", transport
        )
    return unsendable


def mail_options(
    sender: str, recipients: list[str], content: bytes, extensions: Container[str]
) -> list[str]:
    """MAIL FROM's parameters: SIZE, SMTPUTF8 and BODY=8BITMIME as the message needs and the
    server offers."""
    options = [f"SIZE={len(content)}"] if "size" in extensions else []
    if not all(address.isascii() for address in (sender, *recipients)):
        options.append("SMTPUTF8")
    if not content.isascii() and "8bitmime" in extensions:
        options.append("BODY=8BITMIME")
    return options


def refusal(code: int, text: str) -> RecipientResult:
    """A refused RCPT: rejected on a 5xx, retried on a 4xx."""
    status: RecipientStatus = "rejected" if code >= 500 else "deferred"
    return RecipientResult(status, code, text)
