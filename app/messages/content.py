"""A message's content as it went to one recipient, for admins: the MIME (message/rfc822) and the
rendered parts.

Recomposed from the stored message rather than stored at send time: the dispatcher is the hot
path, and keeping every MIME would write each message's bytes again, once per transaction (a
group sent one by one: once per recipient), attachments included; bench/raw_store.py measures it.
Recomposing gives the same bytes as the send: the same payload, Message-ID, Date, batch shape and
signed unsubscribe link, the theme it went out in (messages.theme, set by its first attempt) and
its profile's signature. What it cannot know is an edit made since to that theme or signature.
Nor does it carry the DKIM-Signature a signing profile put in front: that was made at send time
(its timestamp, maybe a key rotated since), so the raw message is what was signed, without it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.delivery.links import Links
from app.delivery.models import Message, Recipient
from app.delivery.shape import Shape
from app.delivery.stored import StoredMessage
from app.errors import Conflict, Gone, NotFound
from app.messages.schemas import AttachmentInfo, Rendered
from app.servers.models import ServerProfile
from app.themes.models import Theme
from app.themes.render import Layout
from app.themes.service import layout_of
from app.transports.base import OutgoingMessage
from app.transports.errors import PermanentError


async def composed(
    session: AsyncSession, links: Links, message_id: str, recipient: str | None
) -> tuple[OutgoingMessage, str]:
    """The transaction that carried the message to `recipient` (default: its first), and that
    recipient's address as the message has it."""
    message = await session.scalar(
        select(Message).where(Message.id == message_id).options(selectinload(Message.recipients))
    )
    if message is None:
        raise NotFound(f"no message {message_id!r}")
    stored = StoredMessage.of(message.payload)
    if stored.test:
        raise Conflict(
            f"message {message.id} is a test mail: its content is not kept",
            details=[{"field": "id", "message": "test mail"}],
        )
    if message.body_purged_at is not None:
        raise Gone(
            f"the body of message {message.id} was purged on "
            f"{message.body_purged_at:%Y-%m-%d} (POSTROOM_RETENTION_BODY_DAYS)",
            details=[{"field": "bodyPurgedAt", "message": "purged"}],
        )
    row = _recipient(message, recipient)
    profile = None
    if message.server is not None:
        profile = await session.scalar(
            select(ServerProfile).where(ServerProfile.name == message.server)
        )
    layout = await _layout(session, message, profile)
    shape = Shape(message, stored, message.recipients, profile, layout, links)
    batches = shape.batches([r.email for r in message.recipients])
    batch = next(b for b in batches if row.email in b.recipients)
    try:
        outgoing = shape.compose(batch)
    except (PermanentError, ValueError) as err:
        raise Conflict(f"message {message.id} cannot be composed: {err}") from err
    return outgoing, row.email


def rendered(outgoing: OutgoingMessage, recipient: str) -> Rendered:
    content = outgoing.content
    return Rendered(
        recipient=recipient,
        subject=content.subject,
        text=content.text,
        html=content.html,
        attachments=[
            AttachmentInfo(filename=a.filename, content_type=a.content_type, size=len(a.content))
            for a in content.attachments
        ],
    )


def _recipient(message: Message, email: str | None) -> Recipient:
    if not message.recipients:
        raise Conflict(f"message {message.id} has no recipient")
    if email is None:
        return message.recipients[0]
    for row in message.recipients:
        if row.email.lower() == email.lower():
            return row
    raise NotFound(
        f"message {message.id} has no recipient {email!r}",
        details=[{"field": "recipient", "message": "not a recipient of this message"}],
    )


async def _layout(
    session: AsyncSession, message: Message, profile: ServerProfile | None
) -> Layout | None:
    """The theme it went out in: the one its first attempt recorded, or, before any attempt, the
    one it names, else its profile's (the dispatcher's rule)."""
    if message.payload.get("themeSet") or message.attempts > 0:
        name = message.theme
    else:
        name = profile.theme if profile is not None else None
    if name is None:
        return None
    theme = await session.scalar(select(Theme).where(Theme.name == name))
    return layout_of(theme) if theme is not None else None
