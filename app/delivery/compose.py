"""A stored message (app/delivery/stored.py) plus one batch of recipients -> the MIME bytes and
envelope a transport sends.

The MIME is 7-bit clean (quoted-printable or base64 parts, RFC 2047 headers) with CRLF line ends,
so every transport can take the same bytes. Bcc is never in `mime`; `mime_with_bcc` keeps it for
APIs that have no envelope.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from email.header import Header
from email.utils import encode_rfc2231, format_datetime

from app.db import new_id
from app.delivery.grouping import Batch
from app.delivery.stored import Parts, StoredMessage
from app.dkim.signer import Signer
from app.schemas import a_label_domain, a_labels
from app.themes.render import Layout, RenderError, dress
from app.transports.base import Address, Attachment, Content, OutgoingMessage
from app.transports.errors import PermanentError

UNDISCLOSED = "undisclosed-recipients:;"
FOLD_AT = 78
MAX_LINE = 998
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_ATOMS = re.compile(r"[!-~]+( [!-~]+)*")
"""A display name that reads back as it is unquoted: words separated by single spaces."""
LIST_UNSUBSCRIBE = ("list-unsubscribe", "list-unsubscribe-post")
ONE_CLICK = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
"""RFC 8058: the header that says a POST to the List-Unsubscribe URL unsubscribes."""


def new_message_id(sender: str) -> str:
    domain = a_label_domain(sender.rpartition("@")[2]) or "postroom.invalid"
    return f"<{new_id()}@{domain}>"


def content_of(
    message: StoredMessage,
    batch: Batch,
    *,
    layout: Layout | None = None,
    signature: str | None = None,
    names: Mapping[str, str] | None = None,
) -> Content:
    """The message's parts as this batch shows them.

    `names` are the group members' display names by address (`StoredMessage.group_names`): a
    caller composing many single-recipient batches of one group passes them so they are not
    rebuilt each time.

    A single-recipient batch for a recipient with content of its own (`personal`, see
    app/messages/rules.py) uses that. Then `dress`: a text part generated from html-only bodies,
    the profile's signature appended, the theme's layouts around the bodies. Raises RenderError.
    """
    if batch.mode == "visible":
        to, cc, bcc = message.to, message.cc, message.bcc
    elif batch.mode == "single":
        names = message.group_names() if names is None else names
        to, cc, bcc = (Address(batch.recipients[0], names.get(batch.recipients[0], "")),), (), ()
    else:
        to, cc, bcc = (), (), tuple(Address(r) for r in batch.recipients)
    attachments = tuple(
        Attachment(a.filename, a.content_type, base64.b64decode(a.content))
        for a in message.attachments
    )
    parts: Parts = message
    if batch.mode == "single":
        parts = message.parts_for(batch.recipients[0])
    subject = parts.subject or ""
    text, html = dress(
        subject=subject,
        text=parts.text,
        html=parts.html,
        layout=layout,
        signature=signature,
    )
    return Content(
        sender=message.sender,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=message.reply_to,
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        headers=tuple(message.headers.items()),
        undisclosed=batch.mode == "undisclosed",
    )


def to_mime(content: Content, message_id: str, date: datetime, *, with_bcc: bool = False) -> bytes:
    """The message as RFC 5322 bytes with CRLF line ends, written directly rather than through
    `email.message.EmailMessage` (whose header parsing was most of the dispatcher's time).

    Headers are RFC 2047 encoded and folded when they are not short ASCII; a body is 7bit when it
    is ASCII with short lines, else quoted-printable or base64, whichever is smaller.
    """
    lines = [_address_header("From", (content.sender,))]
    if content.undisclosed:
        lines.append("To: " + UNDISCLOSED)
    elif content.to:
        lines.append(_address_header("To", content.to))
    if content.cc:
        lines.append(_address_header("Cc", content.cc))
    if with_bcc and content.bcc:
        lines.append(_address_header("Bcc", content.bcc))
    if content.reply_to:
        lines.append(_address_header("Reply-To", content.reply_to))
    lines.append(_header("Subject", content.subject))
    lines.append("Date: " + format_datetime(date))
    lines.append("Message-ID: " + message_id)
    lines.extend(_header(name, value) for name, value in content.headers)
    lines.append("MIME-Version: 1.0")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    return head + _body(content, message_id)


def _body(content: Content, message_id: str) -> bytes:
    """The MIME entity of the bodies and attachments, its own headers first."""
    if content.text is not None and content.html is not None:
        entity = _multipart(
            "alternative",
            [_text_part(content.text, "plain"), _text_part(content.html, "html")],
            message_id,
        )
    elif content.text is not None:
        entity = _text_part(content.text, "plain")
    else:
        entity = _text_part(content.html or "", "html")
    if content.attachments:
        parts = [entity, *map(_attachment_part, content.attachments)]
        entity = _multipart("mixed", parts, message_id)
    return entity


def _text_part(text: str, subtype: str) -> bytes:
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if data.isascii() and all(len(line) <= MAX_LINE for line in data.split(b"\n")):
        encoding, body = "7bit", data.replace(b"\n", b"\r\n")
    else:
        qp = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
        b64 = _base64_lines(data)
        encoding, body = ("quoted-printable", qp) if len(qp) <= len(b64) else ("base64", b64)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + body


def _attachment_part(attachment: Attachment) -> bytes:
    filename = _parameter("filename", attachment.filename)
    return (
        f"Content-Type: {attachment.content_type}\r\n"
        f"Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; {filename}\r\n\r\n"
    ).encode() + _base64_lines(attachment.content)


def _multipart(subtype: str, parts: list[bytes], message_id: str) -> bytes:
    """The boundary is derived from the Message-ID, not drawn at random: composing a message
    again gives the same bytes (GET /messages/{id}/raw recomposes it as it was sent)."""
    seed = f"{message_id}/{subtype}"
    boundary = f"=_{hashlib.blake2b(seed.encode(), digest_size=16).hexdigest()}"
    while any(boundary.encode() in part for part in parts):
        seed += "/"
        boundary = f"=_{hashlib.blake2b(seed.encode(), digest_size=16).hexdigest()}"
    delimiter = b"--" + boundary.encode()
    # the CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1), not to the part
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
        + body
        + delimiter
        + b"--\r\n"
    )


def _base64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _parameter(name: str, value: str) -> str:
    """A MIME parameter: quoted when ASCII, RFC 2231 encoded otherwise."""
    if value.isascii():
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{name}="{quoted}"'
    return f"{name}*={encode_rfc2231(value, 'utf-8')}"


def _mailbox(address: Address) -> str:
    """`Name <email>`: the name quoted when it holds specials, RFC 2047 encoded when not ASCII.
    An IDN domain goes in A-labels (bob@xn--bcher-kva.example, as nodemailer writes it); a
    non-ASCII local part stays UTF-8 (RFC 6532): the SMTP transport then needs SMTPUTF8."""
    name, email = address.name, a_labels(address.email)
    if not name:
        return email
    if not name.isascii():
        name = Header(name, "utf-8").encode(linesep="\r\n")
    elif _SPECIALS.search(name) or not _ATOMS.fullmatch(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{email}>"


def _address_header(name: str, addresses: tuple[Address, ...]) -> str:
    """An address list header, folded between addresses (encoded-words never span one)."""
    lines, current = [], f"{name}:"
    for index, address in enumerate(addresses):
        mailbox = _mailbox(address) + ("," if index < len(addresses) - 1 else "")
        if len(current) + len(mailbox) + 1 > FOLD_AT and index:
            lines.append(current)
            current = ""
        current += " " + mailbox
    return "\r\n".join([*lines, current])


def _header(name: str, value: str) -> str:
    """One unstructured header field, folded to 78 characters where it can be, RFC 2047 encoded
    when it is not ASCII or has a word too long for a line."""
    line = f"{name}: {value}"
    if value.isascii() and (len(line) <= FOLD_AT or (" " not in value and len(line) <= MAX_LINE)):
        return line  # short, or one word that no fold could shorten (List-Unsubscribe's URL)
    folded = Header(value, "us-ascii" if value.isascii() else "utf-8", header_name=name).encode(
        linesep="\r\n"
    )
    if any(len(part) > MAX_LINE - len(name) - 2 for part in folded.split("\r\n")):
        folded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {folded}"


def compose(
    payload: StoredMessage,
    *,
    batch: Batch,
    message_id: str,
    date: datetime,
    layout: Layout | None = None,
    signature: str | None = None,
    names: Mapping[str, str] | None = None,
    unsubscribe_url: str | None = None,
    dkim: Signer | None = None,
) -> OutgoingMessage:
    """Raises PermanentError (EMESSAGE) when the theme's layout cannot be rendered.

    `unsubscribe_url`: this batch's one-click unsubscribe link, which goes in List-Unsubscribe
    with List-Unsubscribe-Post (RFC 8058), in place of any the message's headers gave.
    `dkim`: the profile's signer; its DKIM-Signature goes in front of both `mime` and
    `mime_with_bcc` (Bcc is not signed, so one signature holds for both)."""
    try:
        content = content_of(payload, batch, layout=layout, signature=signature, names=names)
    except RenderError as err:
        raise PermanentError(f"the theme cannot be rendered: {err}", code="EMESSAGE") from err
    if unsubscribe_url is not None:
        headers = [h for h in content.headers if h[0].lower() not in LIST_UNSUBSCRIBE]
        headers += [("List-Unsubscribe", f"<{unsubscribe_url}>"), ONE_CLICK]
        content = dataclasses.replace(content, headers=tuple(headers))
    mime = to_mime(content, message_id, date)
    with_bcc = to_mime(content, message_id, date, with_bcc=True) if content.bcc else None
    if dkim is not None:
        field = dkim.signature(mime)
        mime = field + mime
        with_bcc = field + with_bcc if with_bcc is not None else None
    return OutgoingMessage(
        envelope_from=payload.sender.email,
        recipients=batch.recipients,
        mime=mime,
        message_id=message_id,
        content=content,
        mime_with_bcc=with_bcc,
    )
