"""The API face of sending: accept a message into the outbox, and read the sending records."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import and_, exists, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.config import Settings
from app.db import new_id, utcnow
from app.delivery.compose import new_message_id
from app.delivery.models import MESSAGES, RECIPIENTS, Message, Recipient
from app.delivery.transports import BUILTIN
from app.errors import (
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    error_body,
    invalid_body,
)
from app.events.models import EventRow, EventType
from app.events.service import events_of
from app.messages.bounds import enforce
from app.messages.lookups import Lookups
from app.messages.schemas import LINE_BREAKS, Accepted, BatchItem, MessageIn
from app.messages.statuses import shown_as, status_at
from app.security import Principal
from app.servers.models import ServerProfile
from app.servers.service import PUBLIC_URL_NEEDED
from app.suppressions import service as suppressions
from app.themes import service as themes

QUEUED: EventType = "queued"

PERSONAL_FACTOR = 10
"""Per-recipient rendering may store up to this many times the message size limit in all."""


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    address: str | None


def request_hash(body: MessageIn) -> str:
    canonical = json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Rows:
    """The rows an accepted message adds: its message row and its recipients'."""

    message: dict[str, Any]
    recipients: list[dict[str, Any]]
    accepted: Accepted


async def enqueue(
    session: AsyncSession,
    settings: Settings,
    caller: Caller,
    body: MessageIn,
    idempotency_key: str | None = None,
) -> tuple[Accepted, bool]:
    """Store the message and its recipients; returns the answer and whether it is a replay."""
    [outcome] = await enqueue_each(session, settings, [(caller, body, idempotency_key)])
    if isinstance(outcome, AppError):
        raise outcome
    return outcome


MESSAGE_IN: TypeAdapter[MessageIn] = TypeAdapter(MessageIn)


async def enqueue_each(
    session: AsyncSession,
    settings: Settings,
    requests: Sequence[tuple[Caller, MessageIn, str | None]],
) -> list[tuple[Accepted, bool] | AppError]:
    """Store each (caller, body, Idempotency-Key) in the session; a message that cannot be
    accepted gets its AppError in its place, and the others are stored all the same.

    The rows go in with one INSERT per table for the lot (SQLAlchemy's bulk insert), except a
    message with an Idempotency-Key: it is inserted at once in a savepoint, so that a concurrent
    duplicate fails alone (409). A sender's message is held to its bounds."""
    lookups = Lookups(session)
    outcomes: list[tuple[Accepted, bool] | AppError] = []
    pending: list[_Rows] = []
    listed = await suppressions.listed(session, _addresses(requests))
    for caller, body, key in requests:
        try:
            outcome, rows = await _accept(session, settings, caller, body, key, lookups, listed)
            if rows is not None and key is not None:
                await _insert_alone(session, rows)
            elif rows is not None:
                pending.append(rows)
        except AppError as err:
            outcomes.append(err)
        else:
            outcomes.append(outcome)
    if pending:
        await _insert(session, pending)
    return outcomes


def _addresses(requests: Sequence[tuple[Caller, MessageIn, str | None]]) -> set[str]:
    """Every recipient of these messages that minds the suppression list (one lookup for all)."""
    found: set[str] = set()
    for _, body, _ in requests:
        if not body.ignore_suppressions:
            found.update(a.email for a in body.recipients or ())
            found.update(a.email for a in (*body.to, *body.cc, *body.bcc))
    return found


async def _insert_alone(session: AsyncSession, rows: _Rows) -> None:
    try:
        async with session.begin_nested():
            await _insert(session, [rows])
    except IntegrityError as err:
        raise Conflict("a request with this Idempotency-Key is in progress; retry it") from err


async def _insert(session: AsyncSession, pending: list[_Rows]) -> None:
    """The messages and their recipients: one statement per table for the lot.

    Each recipient's `queued` event is not a row: it is the message's acceptance, shown from
    `created_at` (an events row per recipient here cost a third more per POST)."""
    await session.execute(insert(MESSAGES), [rows.message for rows in pending])
    await session.execute(insert(RECIPIENTS), [r for rows in pending for r in rows.recipients])
    for rows in pending:
        rows.accepted.queued(rows.message["server"] or BUILTIN, len(rows.recipients))


async def _accept(
    session: AsyncSession,
    settings: Settings,
    caller: Caller,
    body: MessageIn,
    idempotency_key: str | None,
    lookups: Lookups,
    listed: suppressions.Listed,
) -> tuple[tuple[Accepted, bool], _Rows | None]:
    """Check and render one message: its answer, and the rows to store (none for a replay)."""
    _check_limits(settings, body)
    _check_suppression_flags(settings, caller, body)
    digest = request_hash(body) if idempotency_key is not None else None
    if idempotency_key is not None:
        replay = await _replay(session, settings, caller, idempotency_key, digest)
        if replay is not None:
            return (replay, True), None
    profile = await lookups.profile(body.server)
    sender_email, sender_name = await _sender(lookups, body, profile)
    if not caller.principal.is_admin:
        await enforce(
            lookups,
            caller.principal,
            server=body.server,
            profile=profile,
            sender=sender_email,
            from_named=body.from_ is not None,
        )
    if body.theme is not None:
        await themes.find_theme(session, body.theme)
    payload = body.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude={
            "from_", "recipients", "server", "resource", "template", "theme", "data",
            "ignore_suppressions", "list_unsubscribe", "send_at",
        },
    )  # fmt: skip
    if body.ignore_suppressions:
        payload["ignoreSuppressions"] = True
    if body.list_unsubscribe is not None:
        payload["listUnsubscribe"] = body.list_unsubscribe
    payload["from"] = {"email": sender_email, "name": sender_name or ""}
    if body.recipients is not None:
        payload["group"] = [{"email": r.email, "name": r.name or ""} for r in body.recipients]
    if "theme" in body.model_fields_set:
        payload["themeSet"] = True
    message_pk = new_id()
    recipients = _recipients(body, message_pk)
    if body.template is not None:
        await _render(session, settings, body, payload, recipients)
        _check_rendered_subjects(payload)
    now = utcnow()
    message = {
        "id": message_pk,
        "message_id": new_message_id(sender_email),
        "status": "queued",
        "sender": sender_email,
        "subject": _record_subject(payload),
        "server": profile.name if profile is not None else None,
        "template": body.template,
        "theme": body.theme,
        "resource": body.resource,
        "payload": payload,
        "created_by": caller.principal.name,
        "client_ip": caller.address,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
        "attempts": 0,
        "next_attempt_at": body.send_at or now,
        "send_at": body.send_at,
        "created_at": now,
    }
    accepted = Accepted(
        id=message_pk, status=status_at(body.send_at), message_id=message["message_id"]
    )
    if not body.ignore_suppressions:
        scope = profile.name if profile is not None else BUILTIN
        accepted.suppressed = [r["email"] for r in recipients if listed.why(r["email"], scope)]
        if len(accepted.suppressed) == len(recipients):
            accepted.status = "suppressed"  # the dispatcher's own check ends it so, unsent
    return (accepted, False), _Rows(message, recipients, accepted)


async def enqueue_batch(
    session: AsyncSession,
    settings: Settings,
    caller: Caller,
    items: list[dict[str, Any]],
) -> list[BatchItem]:
    """Store each valid message; an invalid one gets the error it would have had alone."""
    results: list[BatchItem | None] = []
    valid: list[tuple[Caller, MessageIn, None]] = []
    for item in items:
        try:
            valid.append((caller, MESSAGE_IN.validate_python(item), None))
            results.append(None)
        except ValidationError as err:
            results.append(BatchItem(status=422, error=invalid_body(err.errors())["error"]))
    outcomes = iter(await enqueue_each(session, settings, valid))
    return [result or _batch_item(next(outcomes)) for result in results]


def _batch_item(outcome: tuple[Accepted, bool] | AppError) -> BatchItem:
    if isinstance(outcome, AppError):
        error = error_body(outcome.code, outcome.message, outcome.details)["error"]
        return BatchItem(status=outcome.status_code, error=error)
    accepted, _ = outcome
    item = BatchItem(
        status=202,
        id=accepted.id,
        message_id=accepted.message_id,
        suppressed=accepted.suppressed,
    )
    item.events.update(accepted.events)
    return item


async def _render(
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


def _check_rendered_subjects(payload: dict[str, Any]) -> None:
    """A rendered subject goes into a header: no line separator of any kind (the template
    renderer refuses CR, LF and NUL; Python's email refuses the others at send time)."""
    subjects = [payload.get("subject") or ""]
    subjects += [parts.get("subject") or "" for parts in payload.get("personal", {}).values()]
    if any(ch in LINE_BREAKS for subject in subjects for ch in subject):
        raise Invalid("the rendered subject has a line separator", field="data")


def _record_subject(payload: dict[str, Any]) -> str:
    """The subject for the records: the shared one, else the first personalised one."""
    personal: dict[str, str] = next(iter(payload.get("personal", {}).values()), {})
    return str(payload.get("subject") or personal.get("subject") or "")


def _check_suppression_flags(settings: Settings, caller: Caller, body: MessageIn) -> None:
    if body.ignore_suppressions and not caller.principal.is_admin:
        raise Forbidden(
            "only an admin may send past the suppression list",
            details=[{"field": "ignoreSuppressions", "message": "admins only"}],
        )
    if body.list_unsubscribe and settings.public_url is None:
        raise Invalid(PUBLIC_URL_NEEDED, field="listUnsubscribe")


def _check_limits(settings: Settings, body: MessageIn) -> None:
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


def _recipients(body: MessageIn, message_pk: str) -> list[dict[str, Any]]:
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


async def _replay(
    session: AsyncSession, settings: Settings, caller: Caller, key: str, digest: str | None
) -> Accepted | None:
    earlier = await session.scalar(
        select(Message).where(
            Message.created_by == caller.principal.name, Message.idempotency_key == key
        )
    )
    if earlier is None:
        return None
    if earlier.created_at < utcnow() - timedelta(seconds=settings.idempotency_ttl):
        earlier.idempotency_key = None
        await session.flush()
        return None
    if earlier.request_hash != digest:
        raise Invalid(
            "this Idempotency-Key was used with a different body", field="Idempotency-Key"
        )
    return Accepted(id=earlier.id, status=status_at(earlier.send_at), message_id=earlier.message_id)


async def _sender(
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


async def get_message(
    session: AsyncSession, message_id: str, principal: Principal
) -> tuple[Message, list[EventRow]]:
    """The message with its recipients and attempts, and its events in the order they happened."""
    message = await session.scalar(
        select(Message)
        .where(Message.id == message_id)
        .options(selectinload(Message.recipients), selectinload(Message.attempt_log))
    )
    if message is None or not (principal.is_admin or message.created_by == principal.name):
        raise NotFound(f"no message {message_id!r}")  # a sender cannot tell others' ids exist
    return message, await events_of(session, [message.id])


@dataclass(frozen=True, slots=True)
class RecordFilter:
    sender: str | None = None
    created_by: str | None = None
    """The user who posted them: a sender's search is always held to its own."""
    recipient: str | None = None
    template: str | None = None
    theme: str | None = None
    resource: str | None = None
    server: str | None = None
    status: str | None = None
    event: str | None = None
    """An event type: messages with at least one event of it."""
    created_from: datetime | None = None
    created_to: datetime | None = None


def encode_cursor(message: Message) -> str:
    raw = f"{message.created_at.isoformat()}|{message.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or "\0" in ident:
            raise ValueError("not a cursor")
        return when, ident
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise BadRequest(
            "invalid cursor", details=[{"field": "cursor", "message": "invalid"}]
        ) from err


async def search(
    session: AsyncSession, where: RecordFilter, *, limit: int, cursor: str | None
) -> tuple[list[Message], str | None]:
    """Sending records, newest first, `limit` a page; the cursor continues after the last one."""
    query = select(Message)
    for column, value in (
        (Message.sender, where.sender),
        (Message.created_by, where.created_by),
        (Message.template, where.template),
        (Message.theme, where.theme),
        (Message.resource, where.resource),
        (Message.server, where.server),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.status is not None:
        query = query.where(shown_as(where.status, utcnow()))
    if where.recipient is not None:
        query = query.where(
            exists().where(
                and_(Recipient.message_pk == Message.id, Recipient.email == where.recipient)
            )
        )
    if where.event is not None and where.event != QUEUED:  # every message was queued
        query = query.where(
            exists().where(and_(EventRow.message_pk == Message.id, EventRow.type == where.event))
        )
    if where.created_from is not None:
        query = query.where(Message.created_at >= where.created_from)
    if where.created_to is not None:
        query = query.where(Message.created_at < where.created_to)
    if cursor is not None:
        created, ident = _decode_cursor(cursor)
        query = query.where(
            or_(
                Message.created_at < created,
                and_(Message.created_at == created, Message.id < ident),
            )
        )
    rows = list(
        await session.scalars(
            query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1)
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None
