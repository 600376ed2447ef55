"""The API face of sending: accept messages into the outbox, in one transaction for a batch.

What a message must satisfy, and how it is rendered, are the intake rules (app/messages/rules.py);
the sending records are app/messages/records.py's."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import new_id, utcnow
from app.delivery.compose import new_message_id
from app.delivery.models import MESSAGES, RECIPIENTS, Message
from app.delivery.stored import Parts
from app.delivery.transports import BUILTIN
from app.errors import (
    AppError,
    Conflict,
    Invalid,
    error_body,
    invalid_body,
)
from app.identity import Principal
from app.messages import rules
from app.messages.bounds import enforce
from app.messages.lookups import Lookups
from app.messages.schemas import Accepted, BatchItem, MessageIn
from app.messages.statuses import status_at
from app.suppressions import service as suppressions
from app.themes import service as themes
from app.transports.base import Address


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    address: str | None


EventCounts = Mapping[tuple[str, str], int]
"""How many delivery events of each (type, profile): what app/metrics.py counts."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A message the service took: the answer, whether it replays an earlier request's, and the
    `queued` events of its recipients, which the caller counts in the metrics once committed.

    Not a field of the answer: a pydantic private attribute cost 12 us per message (timeit), an
    eighth of the batch endpoint's CPU per message."""

    answer: Accepted
    replayed: bool
    events: EventCounts


@dataclass(frozen=True, slots=True)
class _Rows:
    """The rows an accepted message adds: its message row and its recipients'."""

    message: dict[str, Any]
    recipients: list[dict[str, Any]]


async def enqueue(
    session: AsyncSession,
    settings: Settings,
    caller: Caller,
    body: MessageIn,
    idempotency_key: str | None = None,
) -> Stored:
    """Store the message and its recipients."""
    [outcome] = await enqueue_each(session, settings, [(caller, body, idempotency_key)])
    if isinstance(outcome, AppError):
        raise outcome
    return outcome


MESSAGE_IN: TypeAdapter[MessageIn] = TypeAdapter(MessageIn)


async def enqueue_each(
    session: AsyncSession,
    settings: Settings,
    requests: Sequence[tuple[Caller, MessageIn, str | None]],
) -> list[Stored | AppError]:
    """Store each (caller, body, Idempotency-Key) in the session; a message that cannot be
    accepted gets its AppError in its place, and the others are stored all the same.

    The rows go in with one INSERT per table for the lot (SQLAlchemy's bulk insert), except a
    message with an Idempotency-Key: it is inserted at once in a savepoint, so that a concurrent
    duplicate fails alone (409). A sender's message is held to its bounds."""
    lookups = Lookups(session)
    outcomes: list[Stored | AppError] = []
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


async def _accept(
    session: AsyncSession,
    settings: Settings,
    caller: Caller,
    body: MessageIn,
    idempotency_key: str | None,
    lookups: Lookups,
    listed: suppressions.Listed,
) -> tuple[Stored, _Rows | None]:
    """Check and render one message: what it is to the caller, and the rows to store (none for
    a replay)."""
    rules.check_limits(settings, body)
    rules.check_flags(settings, caller.principal, body)
    digest = rules.request_hash(body) if idempotency_key is not None else None
    if idempotency_key is not None:
        replay = await _replay(session, settings, caller, idempotency_key, digest)
        if replay is not None:
            return Stored(replay, replayed=True, events={}), None
    profile = await lookups.profile(body.server)
    sender_email, sender_name = await rules.sender(lookups, body, profile)
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
    message_pk = new_id()
    recipients = rules.recipient_rows(body, message_pk)
    shared: dict[str, str] = {}
    personal: dict[str, Parts] = {}
    if body.template is not None:
        shared, personal = await rules.render(session, settings, body, recipients)
    stored = rules.stored_message(body, Address(sender_email, sender_name or ""), shared, personal)
    if body.template is not None:
        rules.check_rendered_subjects(stored)
    now = utcnow()
    message = {
        "id": message_pk,
        "message_id": new_message_id(sender_email),
        "status": "queued",
        "sender": sender_email,
        "subject": rules.record_subject(stored),
        "server": profile.name if profile is not None else None,
        "template": body.template,
        "theme": body.theme,
        "resource": body.resource,
        "payload": stored.to_json(),
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
    scope = profile.name if profile is not None else BUILTIN
    if not body.ignore_suppressions:
        accepted.suppressed = [r["email"] for r in recipients if listed.why(r["email"], scope)]
        if len(accepted.suppressed) == len(recipients):
            accepted.status = "suppressed"  # the dispatcher's own check ends it so, unsent
    taken = Stored(accepted, replayed=False, events={("queued", scope): len(recipients)})
    return taken, _Rows(message, recipients)


async def enqueue_batch(
    session: AsyncSession,
    settings: Settings,
    caller: Caller,
    items: list[dict[str, Any]],
) -> tuple[list[BatchItem], Counter[tuple[str, str]]]:
    """Store each valid message; an invalid one gets the error it would have had alone. Returns
    the items' results, and the events of those stored (for the metrics, once committed)."""
    results: list[BatchItem | None] = []
    valid: list[tuple[Caller, MessageIn, None]] = []
    for item in items:
        try:
            valid.append((caller, MESSAGE_IN.validate_python(item), None))
            results.append(None)
        except ValidationError as err:
            results.append(BatchItem(status=422, error=invalid_body(err.errors())["error"]))
    outcomes = await enqueue_each(session, settings, valid)
    events: Counter[tuple[str, str]] = Counter()
    for outcome in outcomes:
        if isinstance(outcome, Stored):
            events.update(outcome.events)
    each = iter(outcomes)
    return [result or _batch_item(next(each)) for result in results], events


def _batch_item(outcome: Stored | AppError) -> BatchItem:
    if isinstance(outcome, AppError):
        error = error_body(outcome.code, outcome.message, outcome.details)["error"]
        return BatchItem(status=outcome.status_code, error=error)
    accepted = outcome.answer
    return BatchItem(
        status=202,
        id=accepted.id,
        message_id=accepted.message_id,
        suppressed=accepted.suppressed,
    )


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
