"""The intake rules: what a message must satisfy to be accepted (limits, flags, a sender, the
rendered subjects), and what it becomes (its recipient rows, its rendered parts), before
app/messages/service.py stores it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.delivery.stored import Parts, StoredAttachment, StoredMessage
from app.errors import Forbidden, Invalid
from app.identity import Principal
from app.messages.lookups import Lookups
from app.messages.schemas import LINE_BREAKS, AddressIn, MessageIn
from app.servers.models import ServerProfile
from app.servers.service import PUBLIC_URL_NEEDED
from app.themes import service as themes
from app.transports.base import Address

PERSONAL_FACTOR = 10
"""Per-recipient rendering may store up to this many times the message size limit in all."""


def request_hash(body: MessageIn) -> str:
    canonical = json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_limits(settings: Settings, body: MessageIn) -> None:
    """How many recipients and how large the attachments may be."""
    visible = len(body.to) + len(body.cc) + len(body.bcc)
    if visible > settings.max_visible_recipients:
        raise Invalid(
            f"at most {settings.max_visible_recipients} to/cc/bcc recipients; "
            "use `recipients` for a larger group",
            field="to",
        )
    if body.recipients is not None and len(body.recipients) > settings.max_group_recipients:
        raise Invalid(
            f"at most {settings.max_group_recipients} recipients in a group", field="recipients"
        )
    size = sum(len(a.content) * 3 // 4 for a in body.attachments)
    if size > settings.max_message_bytes:
        raise Invalid("the attachments are over the message size limit", field="attachments")


def check_flags(settings: Settings, principal: Principal, body: MessageIn) -> None:
    """Sending past the suppression list is for admins; unsubscribe links need a public URL."""
    if body.ignore_suppressions and not principal.is_admin:
        raise Forbidden(
            "only an admin may send past the suppression list",
            details=[{"field": "ignoreSuppressions", "message": "admins only"}],
        )
    if body.list_unsubscribe and settings.public_url is None:
        raise Invalid(PUBLIC_URL_NEEDED, field="listUnsubscribe")


async def sender(
    lookups: Lookups, body: MessageIn, profile: ServerProfile | None
) -> tuple[str, str | None]:
    """message `from` > the profile's sender > branding."""
    if body.from_ is not None:
        return body.from_.email, body.from_.name
    if profile is not None and profile.sender_email:
        return profile.sender_email, profile.sender_name
    email, name = await lookups.branding_sender()
    if email:
        return email, name
    raise Invalid(
        "no sender: give `from`, or set senderEmail on the profile or in /api/branding",
        field="from",
    )


def recipient_rows(body: MessageIn, message_pk: str) -> list[dict[str, Any]]:
    """The recipient rows: to, cc and bcc (or the group), each address once."""
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    groups: list[tuple[str, list[Any]]] = [("to", body.to), ("cc", body.cc), ("bcc", body.bcc)]
    if body.recipients is not None:
        groups = [("group", body.recipients)]
    for kind, addresses in groups:
        for address in addresses:
            key = address.email.lower()
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "message_pk": message_pk,
                    "email": address.email,
                    "kind": kind,
                    "status": "pending",
                    "data": getattr(address, "data", None),
                }
            )
    return rows


async def render(
    session: AsyncSession,
    settings: Settings,
    body: MessageIn,
    recipients: list[dict[str, Any]],
) -> tuple[dict[str, str], dict[str, Parts]]:
    """Render the template now, so a missing variable is a 422 at POST: the parts the message
    does not give itself, and the personal parts of the group members with `data` of their own.

    The message's own subject/text/html win over the template's. A group recipient with `data` of
    its own (merged over the message's) gets its parts rendered separately, by its email as in its
    Recipient row; compose uses them for that recipient's single-recipient batch.
    """
    assert body.template is not None
    template = await themes.find_template(session, body.template)
    own = {part: getattr(body, part) for part in themes.PARTS if getattr(body, part) is not None}
    skip = frozenset(own)
    data = body.data or {}
    limit = settings.max_message_bytes
    personal = [r for r in recipients if r["data"]]
    shared: dict[str, str] = {}
    if len(personal) < len(recipients):
        shared = themes.render_template(template, data, limit=limit, skip=skip)
    if not personal:
        return shared, {}
    position = {r.email.lower(): i for i, r in reversed(list(enumerate(body.recipients or ())))}
    rendered: dict[str, Parts] = {}
    total = 0
    for row in personal:
        field = f"recipients[{position[row['email'].lower()]}].data"
        parts = themes.render_template(
            template, {**data, **(row["data"] or {})}, limit=limit, skip=skip, data_field=field
        )
        total += sum(len(value) for value in parts.values())
        if total > limit * PERSONAL_FACTOR:
            raise Invalid(
                f"the personalised messages are over {limit * PERSONAL_FACTOR} characters in all",
                field="recipients",
            )
        rendered[row["email"]] = Parts(**(parts | own))
    return shared, rendered


def stored_message(
    body: MessageIn, sender: Address, shared: dict[str, str], personal: dict[str, Parts]
) -> StoredMessage:
    """What the outbox keeps of the message: its parts (its own, else the template's `shared`
    rendering), its recipients as its headers show them, and its options."""
    return StoredMessage(
        sender=sender,
        to=_addresses(body.to),
        cc=_addresses(body.cc),
        bcc=_addresses(body.bcc),
        reply_to=_addresses(body.reply_to),
        group=None if body.recipients is None else _addresses(body.recipients),
        subject=body.subject if body.subject is not None else shared.get("subject"),
        text=body.text if body.text is not None else shared.get("text"),
        html=body.html if body.html is not None else shared.get("html"),
        attachments=tuple(
            StoredAttachment(a.filename, a.content_type, a.content) for a in body.attachments
        ),
        headers=body.headers,
        personal=personal,
        ignore_suppressions=body.ignore_suppressions,
        list_unsubscribe=body.list_unsubscribe,
        theme_set="theme" in body.model_fields_set,
    )


def _addresses(items: Sequence[AddressIn]) -> tuple[Address, ...]:
    return tuple([Address(item.email, item.name or "") for item in items])


def check_rendered_subjects(message: StoredMessage) -> None:
    """A rendered subject goes into a header: no line separator of any kind (the template
    renderer refuses CR, LF and NUL; Python's email refuses the others at send time)."""
    subjects = [message.subject or ""]
    subjects += [parts.subject or "" for parts in message.personal.values()]
    if any(ch in LINE_BREAKS for subject in subjects for ch in subject):
        raise Invalid("the rendered subject has a line separator", field="data")


def record_subject(message: StoredMessage) -> str:
    """The subject for the records: the shared one, else the first personalised one."""
    personal = next(iter(message.personal.values()), Parts())
    return message.subject or personal.subject or ""
