"""OutgoingMessage values for transport tests, composed with the stdlib email package (policy SMTP)
the way the service's composer does: 7-bit MIME without Bcc, plus a copy with Bcc for Graph."""

from __future__ import annotations

import logging
from email.headerregistry import Address as HeaderAddress
from email.headerregistry import Group
from email.message import EmailMessage
from email.policy import SMTP

import httpx

from app.egress import EgressPolicy
from app.transports.base import Address, Attachment, Content, OutgoingMessage, TransportContext

SENDER = Address("sender@example.com", "Sender Name")
MESSAGE_ID = "<20240101000000.1234@postroom.test>"


def context(http: httpx.AsyncClient) -> TransportContext:
    return TransportContext(http=http, egress=EgressPolicy(deny=()), logger=logging.getLogger("t"))


def outgoing(
    *,
    sender: Address = SENDER,
    to: tuple[Address, ...] = (Address("to@example.com", "To Person"),),
    cc: tuple[Address, ...] = (),
    bcc: tuple[Address, ...] = (),
    reply_to: tuple[Address, ...] = (),
    subject: str = "Hello",
    text: str | None = "Hello, world.",
    html: str | None = None,
    attachments: tuple[Attachment, ...] = (),
    headers: tuple[tuple[str, str], ...] = (),
    undisclosed: bool = False,
    recipients: tuple[str, ...] | None = None,
    extra: dict[str, str] | None = None,
) -> OutgoingMessage:
    """A composed message; `recipients` (the envelope) defaults to everyone in To, Cc and Bcc."""
    content = Content(
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        headers=headers,
        undisclosed=undisclosed,
    )
    envelope = recipients or tuple(dict.fromkeys(a.email for a in (*to, *cc, *bcc)))
    return OutgoingMessage(
        envelope_from=sender.email,
        recipients=envelope,
        mime=_mime(content, with_bcc=False),
        message_id=MESSAGE_ID,
        content=content,
        mime_with_bcc=_mime(content, with_bcc=True) if bcc else None,
        extra=extra or {},
    )


def _mime(content: Content, *, with_bcc: bool) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _header(content.sender)
    if content.undisclosed:
        msg["To"] = Group("undisclosed-recipients")
    elif content.to:
        msg["To"] = [_header(a) for a in content.to]
    if content.cc:
        msg["Cc"] = [_header(a) for a in content.cc]
    if with_bcc and content.bcc:
        msg["Bcc"] = [_header(a) for a in content.bcc]
    if content.reply_to:
        msg["Reply-To"] = [_header(a) for a in content.reply_to]
    msg["Subject"] = content.subject
    msg["Date"] = "Mon, 01 Jan 2024 00:00:00 +0000"
    msg["Message-ID"] = MESSAGE_ID
    for name, value in content.headers:
        msg[name] = value
    if content.text is not None:
        msg.set_content(content.text, cte="quoted-printable")
    if content.html is not None:
        if content.text is None:
            msg.set_content(content.html, subtype="html", cte="quoted-printable")
        else:
            msg.add_alternative(content.html, subtype="html", cte="quoted-printable")
    for attachment in content.attachments:
        maintype, subtype = attachment.content_type.split("/", 1)
        msg.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return msg.as_bytes()


def _header(address: Address) -> HeaderAddress:
    return HeaderAddress(address.name, addr_spec=address.email)
