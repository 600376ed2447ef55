"""The intake rules: what a message must satisfy to be accepted (limits, flags, a sender, the
rendered subjects), and what it becomes (its recipient rows, its rendered parts), before
app/messages/service.py stores it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.errors import Forbidden, Invalid
from app.messages.lookups import Lookups
from app.messages.schemas import LINE_BREAKS, MessageIn
from app.security import Principal
from app.servers.models import ServerProfile
from app.servers.service import PUBLIC_URL_NEEDED
from app.themes import service as themes

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
    payload: dict[str, Any],
    recipients: list[dict[str, Any]],
) -> None:
    """Render the template into the payload now, so a missing variable is a 422 at POST.

    The message's own subject/text/html win over the template's. A group recipient with `data` of
    its own (merged over the message's) gets its parts rendered separately, stored under
    payload["personal"][<its email as in its Recipient row>] = {"subject", "text", "html"};
    compose uses them for that recipient's single-recipient batch.
    """
    assert body.template is not None
    template = await themes.find_template(session, body.template)
    own = {part: getattr(body, part) for part in themes.PARTS if getattr(body, part) is not None}
    skip = frozenset(own)
    data = body.data or {}
    limit = settings.max_message_bytes
    personal = [r for r in recipients if r["data"]]
    if len(personal) < len(recipients):
        payload |= themes.render_template(template, data, limit=limit, skip=skip)
    if not personal:
        return
    position = {r.email.lower(): i for i, r in reversed(list(enumerate(body.recipients or ())))}
    rendered: dict[str, dict[str, str]] = {}
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
        rendered[row["email"]] = parts | own
    payload["personal"] = rendered


def check_rendered_subjects(payload: dict[str, Any]) -> None:
    """A rendered subject goes into a header: no line separator of any kind (the template
    renderer refuses CR, LF and NUL; Python's email refuses the others at send time)."""
    subjects = [payload.get("subject") or ""]
    subjects += [parts.get("subject") or "" for parts in payload.get("personal", {}).values()]
    if any(ch in LINE_BREAKS for subject in subjects for ch in subject):
        raise Invalid("the rendered subject has a line separator", field="data")


def record_subject(payload: dict[str, Any]) -> str:
    """The subject for the records: the shared one, else the first personalised one."""
    personal: dict[str, str] = next(iter(payload.get("personal", {}).values()), {})
    return str(payload.get("subject") or personal.get("subject") or "")
