"""A stored message plus one batch of recipients -> the MIME bytes and envelope a transport sends.

The MIME is 7-bit clean (quoted-printable or base64 parts, RFC 2047 headers) with CRLF line ends,
so every transport can take the same bytes. Bcc is never in `mime`; `mime_with_bcc` keeps it for
APIs that have no envelope.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from email import policy
from email.headerregistry import Address as MailAddress
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from app.delivery.grouping import Batch
from app.themes.render import Layout, RenderError, dress
from app.transports.base import Address, Attachment, Content, OutgoingMessage
from app.transports.errors import PermanentError

POLICY = policy.SMTP.clone(cte_type="7bit")
UNDISCLOSED = "undisclosed-recipients:;"


def new_message_id(sender: str) -> str:
    domain = sender.rpartition("@")[2] or "postroom.invalid"
    return f"<{uuid.uuid4().hex}@{domain}>"


def _addresses(items: list[dict[str, Any]] | None) -> tuple[Address, ...]:
    return tuple(Address(item["email"], item.get("name") or "") for item in items or ())


def _mail_address(address: Address) -> MailAddress:
    local, _, domain = address.email.rpartition("@")
    return MailAddress(display_name=address.name, username=local, domain=domain)


def content_of(
    payload: dict[str, Any],
    sender: Address,
    batch: Batch,
    *,
    layout: Layout | None = None,
    signature: str | None = None,
) -> Content:
    """The message's parts as this batch shows them.

    A single-recipient batch for a recipient with content of its own (payload["personal"], see
    messages.service) uses that. Then `dress`: a text part generated from html-only bodies, the
    profile's signature appended, the theme's layouts around the bodies. Raises RenderError.
    """
    if batch.mode == "visible":
        to, cc, bcc = (_addresses(payload.get(key)) for key in ("to", "cc", "bcc"))
    elif batch.mode == "single":
        names = {item["email"]: item.get("name") or "" for item in payload.get("group", ())}
        to, cc, bcc = (Address(batch.recipients[0], names.get(batch.recipients[0], "")),), (), ()
    else:
        to, cc, bcc = (), (), tuple(Address(r) for r in batch.recipients)
    attachments = tuple(
        Attachment(a["filename"], a["contentType"], base64.b64decode(a["content"]))
        for a in payload.get("attachments", ())
    )
    parts = payload
    if batch.mode == "single":
        parts = payload.get("personal", {}).get(batch.recipients[0], payload)
    subject = parts.get("subject") or ""
    text, html = dress(
        subject=subject,
        text=parts.get("text"),
        html=parts.get("html"),
        layout=layout,
        signature=signature,
    )
    return Content(
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=_addresses(payload.get("replyTo")),
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        headers=tuple(payload.get("headers", {}).items()),
        undisclosed=batch.mode == "undisclosed",
    )


def to_mime(content: Content, message_id: str, date: datetime, *, with_bcc: bool = False) -> bytes:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = _mail_address(content.sender)
    if content.undisclosed:
        msg["To"] = UNDISCLOSED
    elif content.to:
        msg["To"] = [_mail_address(a) for a in content.to]
    if content.cc:
        msg["Cc"] = [_mail_address(a) for a in content.cc]
    if with_bcc and content.bcc:
        msg["Bcc"] = [_mail_address(a) for a in content.bcc]
    if content.reply_to:
        msg["Reply-To"] = [_mail_address(a) for a in content.reply_to]
    msg["Subject"] = content.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    for name, value in content.headers:
        msg[name] = value
    if content.text is not None:
        msg.set_content(content.text)
        if content.html is not None:
            msg.add_alternative(content.html, subtype="html")
    else:
        msg.set_content(content.html or "", subtype="html")
    for attachment in content.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return msg.as_bytes()


def compose(
    payload: dict[str, Any],
    *,
    sender: Address,
    batch: Batch,
    message_id: str,
    date: datetime,
    layout: Layout | None = None,
    signature: str | None = None,
) -> OutgoingMessage:
    """Raises PermanentError (EMESSAGE) when the theme's layout cannot be rendered."""
    try:
        content = content_of(payload, sender, batch, layout=layout, signature=signature)
    except RenderError as err:
        raise PermanentError(f"the theme cannot be rendered: {err}", code="EMESSAGE") from err
    mime = to_mime(content, message_id, date)
    return OutgoingMessage(
        envelope_from=sender.email,
        recipients=batch.recipients,
        mime=mime,
        message_id=message_id,
        content=content,
        mime_with_bcc=to_mime(content, message_id, date, with_bcc=True) if content.bcc else None,
    )
