"""A submitted message (its RFC 5322 bytes and envelope) as the intake's MessageIn.

MessageIn carries one From, To/Cc/Bcc, Reply-To, a subject, one text and one html body,
attachments and extra headers. A message holding more than that is refused with a reply saying
what could not be kept, never sent with parts missing: inline parts (multipart/related), a third
alternative (a calendar invitation), signed or encrypted parts, an attached message, a second
inline body, a header given twice, Resent-* fields, a Sender other than the From.

What the outbox writes itself is replaced, as for POST /messages: the Message-ID and Date (fixed
at enqueue; the 250 names the new Message-ID), the MIME structure and its Content-* headers.
Received and Return-Path describe earlier hops and are not carried. The envelope sender (MAIL
FROM) is Postroom's own on the way out (the From, or its VERP address): MAIL FROM is used only as
the From of a message that has none.
"""

from __future__ import annotations

import base64
import email
import email.policy
import mimetypes
from collections.abc import Sequence
from email import errors
from email.message import EmailMessage, MIMEPart
from typing import Any

from pydantic import ValidationError

from app.errors import validation_details
from app.messages.schemas import MessageIn
from app.schemas import comparable

NOT_CARRIED = frozenset({"date", "message-id", "mime-version", "received", "return-path"})
"""Headers the outbox writes itself, or that describe hops before it."""
ADDRESS_LISTS = ("to", "cc", "bcc", "reply-to")
"""Address headers whose repeats are one list (RFC 5322 allows each once; some mailers split)."""
SERVER_HEADER = "x-postroom-server"
"""Names the server profile to send through (`server` of POST /messages); not sent on."""
RESOURCE_HEADER = "x-postroom-resource"
"""What the mail is about, for the records (`resource` of POST /messages); not sent on."""
BROKEN_MULTIPART = (
    errors.NoBoundaryInMultipartDefect,
    errors.StartBoundaryNotFoundDefect,
    errors.MultipartInvariantViolationDefect,
)
"""What the parser finds when a multipart's parts cannot be told apart: its content would be
lost, so the message is refused."""


class Refused(Exception):
    """The message cannot be taken as it is; `reply` is the SMTP reply that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _unsupported(what: str) -> Refused:
    return Refused(f"554 5.6.1 {what}")


def _invalid(what: str) -> Refused:
    return Refused(f"554 5.6.0 {what}")


def message_in(raw: bytes, mail_from: str, rcpt_tos: Sequence[str]) -> MessageIn:
    """The message as POST /messages would take it. Raises Refused.

    Validate under app.schemas.local_domains, as the API validates its bodies."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # what policy.default makes
    fields = _header_fields(message, mail_from, rcpt_tos)
    text, html, attachments = _content(message)
    fields |= {"text": text, "html": html, "attachments": attachments}
    try:
        return MessageIn.model_validate(fields)
    except ValidationError as err:
        raise _invalid(described(err)) from err


def described(err: ValidationError) -> str:
    """Pydantic's errors on one line, each naming its field as POST /messages names it."""
    return "; ".join(f"{d['field']}: {d['message']}" for d in validation_details(err.errors()))


def _header_fields(
    message: EmailMessage, mail_from: str, rcpt_tos: Sequence[str]
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    headers: dict[str, str] = {}
    lists: dict[str, list[dict[str, str | None]]] = {name: [] for name in ADDRESS_LISTS}
    single: dict[str, Any] = {}
    for name, value in message.items():
        key = name.lower()
        if key in NOT_CARRIED or key.startswith("content-"):
            continue
        if key.startswith("resent-"):
            raise _unsupported(f"{name} cannot be kept: send the message again as a new one")
        if key in ADDRESS_LISTS:
            lists[key] += _mailboxes(name, value)
        elif key in single or any(known.lower() == key for known in headers):
            raise _invalid(f"the header {name} is given twice; Postroom keeps one of each")
        elif key in ("from", "sender"):
            single[key] = _mailboxes(name, value)
        elif key in ("subject", SERVER_HEADER, RESOURCE_HEADER):
            single[key] = _unescaped(name, str(value))
        else:
            headers[name] = _unescaped(name, str(value))
    sender = _sender(single.get("from") or [], single.get("sender") or [], mail_from)
    fields["from"] = sender
    fields["subject"] = single.get("subject")
    fields["server"] = single.get(SERVER_HEADER)
    fields["resource"] = single.get(RESOURCE_HEADER)
    fields["to"], fields["cc"] = lists["to"], lists["cc"]
    fields["bcc"] = _envelope_only(lists["to"] + lists["cc"], lists["bcc"], rcpt_tos)
    fields["replyTo"] = lists["reply-to"]
    fields["headers"] = headers
    return fields


def _sender(
    authors: list[dict[str, str | None]], senders: list[dict[str, str | None]], mail_from: str
) -> dict[str, str | None]:
    """The one From: the header's, or MAIL FROM's when there is none (as an MTA would add)."""
    if len(authors) > 1:
        raise _unsupported(f"From names {len(authors)} addresses; Postroom sends from one")
    if not authors:
        authors = [{"email": mail_from, "name": None}]
    [author] = authors
    if senders and [comparable(s["email"] or "") for s in senders] != [
        comparable(author["email"] or "")
    ]:
        raise _unsupported("a Sender other than the From cannot be kept: Postroom sends as From")
    return author


def _envelope_only(
    shown: list[dict[str, str | None]],
    bcc_header: list[dict[str, str | None]],
    rcpt_tos: Sequence[str],
) -> list[dict[str, str | None]]:
    """The envelope recipients that To and Cc do not show: Bcc (named as a Bcc header names
    them, if it does). Every To and Cc address must be an envelope recipient: Postroom delivers
    to each, so it cannot show one that SMTP says not to deliver to."""
    envelope = {comparable(r): r for r in rcpt_tos}
    visible = set()
    for address in shown:
        key = comparable(address["email"] or "")
        if key not in envelope:
            raise _invalid(
                f"{address['email']} is in To or Cc but not an envelope recipient (RCPT TO): "
                "Postroom delivers to every To and Cc address"
            )
        visible.add(key)
    names = {comparable(a["email"] or ""): a["name"] for a in bcc_header}
    return [
        {"email": address, "name": names.get(key)}
        for key, address in envelope.items()
        if key not in visible
    ]


def _mailboxes(name: str, value: Any) -> list[dict[str, str | None]]:
    """The addresses of an address header (group syntax, `undisclosed-recipients:;`, has none)."""
    return [
        {
            "email": _unescaped(name, address.addr_spec),
            "name": _unescaped(name, address.display_name) or None,
        }
        for address in value.addresses
    ]


def _unescaped(what: str, value: str) -> str:
    """Raw UTF-8 in a header (RFC 6532) reaches here as surrogate escapes: decode it."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError as err:
        raise _invalid(f"{what} is not UTF-8") from err


def _content(message: EmailMessage) -> tuple[str | None, str | None, list[dict[str, str]]]:
    """The text and html bodies and the attachments: a body (text/plain, text/html or their
    multipart/alternative), alone or first in a multipart/mixed whose other parts are files."""
    for part in message.walk():
        if any(isinstance(defect, BROKEN_MULTIPART) for defect in part.defects):
            kind = part.get_content_type()
            raise _invalid(f"a {kind} part has no parts: its boundary is missing")
    if message.get_content_type() == "multipart/mixed":
        parts = list(message.iter_parts())
    else:
        parts = [message]
    first = parts[0] if parts else None
    if first is not None and _is_body(first):
        text, html = _bodies(first)
        files = parts[1:]
    else:
        text, html, files = "", None, parts  # files only: an empty text goes with them
    return text, html, [_attachment(part, number) for number, part in enumerate(files, 1)]


def _is_body(part: MIMEPart) -> bool:
    if part.get_content_disposition() == "attachment":
        return False
    return part.get_content_maintype() == "multipart" or part.get_content_type() in (
        "text/plain",
        "text/html",
    )


def _bodies(entity: MIMEPart) -> tuple[str | None, str | None]:
    kind = entity.get_content_type()
    if kind == "text/plain":
        return _decoded(entity), None
    if kind == "text/html":
        return None, _decoded(entity)
    if kind != "multipart/alternative":
        raise _unsupported(_cannot_keep(kind))
    text = html = None
    for part in entity.iter_parts():
        sub = part.get_content_type()
        if sub == "text/plain" and text is None:
            text = _decoded(part)
        elif sub == "text/html" and html is None:
            html = _decoded(part)
        elif sub == "multipart/related":
            raise _unsupported(_cannot_keep(sub))
        else:
            raise _unsupported(
                f"a multipart/alternative with a {sub} part (a calendar invitation, say) cannot "
                "be kept: Postroom sends one text/plain and one text/html alternative"
            )
    return (text, html) if text is not None or html is not None else ("", None)


def _cannot_keep(kind: str) -> str:
    if kind == "multipart/related":
        return (
            "multipart/related (inline images, cid: links) cannot be kept: Postroom sends no "
            "inline parts; attach the images or link them"
        )
    if kind in ("multipart/signed", "multipart/encrypted"):
        return (
            f"a {kind} message cannot be kept: Postroom writes the MIME anew, which would break "
            "the signature or encryption"
        )
    if kind.startswith("message/"):
        return f"an attached message ({kind}) cannot be kept: attach it as a file"
    return f"{kind} cannot be kept: Postroom sends a text/plain or text/html body and attachments"


def _attachment(part: MIMEPart, number: int) -> dict[str, str]:
    kind = part.get_content_type()
    if part.get_content_maintype() in ("multipart", "message"):
        raise _unsupported(_cannot_keep(kind))
    filename = part.get_filename()
    if filename is None:
        if part.get_content_maintype() == "text" and part.get_content_disposition() != "attachment":
            raise _unsupported(
                f"a second inline body ({kind}) cannot be kept: Postroom sends one text and one "
                "html body; attach it as a file"
            )
        filename = f"attachment-{number}{mimetypes.guess_extension(kind) or '.bin'}"
    content = _payload(part)
    return {
        "filename": _unescaped("a filename", filename),
        "contentType": kind,
        "content": base64.b64encode(content).decode("ascii"),
    }


def _decoded(part: MIMEPart) -> str:
    """A text part as text, strictly: a charset that does not fit is refused, not guessed."""
    kind = part.get_content_type()
    data = _payload(part)
    charset = part.get_content_charset() or "utf-8"  # undeclared is US-ASCII: UTF-8 reads it
    try:
        text = data.decode(charset)
    except LookupError as err:
        raise _unsupported(f"the {kind} part's charset {charset} is unknown") from err
    except UnicodeDecodeError as err:
        raise _invalid(f"the {kind} part is not valid {charset}") from err
    if "\0" in text:
        raise _invalid(f"the {kind} part holds a NUL character")
    return text.replace("\r\n", "\n")


def _payload(part: MIMEPart) -> bytes:
    """A leaf part's content with its transfer encoding undone."""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""
