"""What a caller may do to a message after posting it: cancel it while it waits, have a deferred
one tried now, send a failed or bounced one again as a new message. Senders may, to their own.

Cancel and retry are conditional UPDATEs of the message row, taken only while it is `queued`. A
claim marks the rows it takes `sending` in a transaction that holds them locked (FOR UPDATE SKIP
LOCKED on PostgreSQL; SQLite runs one writer at a time), so whichever commits first wins: a
cancelled message is never claimed again (claims take `queued` rows), and a claimed one is left
to its attempt, which finishes, and the answer says so.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.config import Settings
from app.db import utcnow
from app.delivery.models import RECIPIENTS, Message, Recipient
from app.delivery.notify import Notifier
from app.delivery.transports import BUILTIN
from app.delivery.vocabulary import DeliveryEvent
from app.errors import Conflict, Gone, NotFound
from app.events.models import EventRow
from app.events.service import record_events
from app.identity import Principal
from app.messages import service
from app.messages.schemas import MessageIn, Resent
from app.messages.service import Caller, EventCounts
from app.messages.statuses import SCHEDULED, shown

UNREACHED = frozenset({"failed", "rejected", "invalid"})
"""Recipient statuses a resend sends to again (besides the recipients that bounced)."""
WAITING = ("pending", "deferred")
"""Recipient statuses a cancel ends: those not yet sent to."""
ROUTING = ("to", "cc", "bcc", "group")


@dataclass(frozen=True, slots=True)
class _State:
    """A message's outbox columns, as read by a column query (no ORM object: nothing cached)."""

    id: str
    created_by: str
    status: str
    attempts: int
    next_attempt_at: datetime
    sent_at: datetime | None
    server: str | None


async def _state(session: AsyncSession, message_id: str, principal: Principal) -> _State:
    """The message's state as committed now; a 404 for another sender's message, as for one
    that does not exist."""
    columns = [getattr(Message, f.name) for f in fields(_State)]
    row = (await session.execute(select(*columns).where(Message.id == message_id))).first()
    if row is None or not (principal.is_admin or row.created_by == principal.name):
        raise NotFound(f"no message {message_id!r}")
    return _State(*row)


def _refused(row: _State, action: str, why: str) -> Conflict:
    status = shown(row.status, row.attempts, row.next_attempt_at, utcnow())
    return Conflict(
        f"message {row.id} cannot be {action}: {why}",
        details=[{"field": "status", "message": status}],
    )


def _being_sent(row: _State, action: str) -> Conflict:
    return _refused(
        row,
        action,
        f"it is being sent (attempt {row.attempts}); the attempt finishes, and its result will be "
        "in the record",
    )


def _finished(row: _State, action: str) -> Conflict:
    match row.status:
        case "sent" | "partially_sent":
            why = f"it was sent at {row.sent_at:%Y-%m-%dT%H:%M:%SZ}"
        case "failed":
            why = "it failed: nothing is left to send (POST .../resend sends it again)"
        case "suppressed":
            why = "every recipient is on the suppression list: nothing was sent"
        case _:
            why = f"it is {row.status}"
    return _refused(row, action, why)


async def cancel(
    session: AsyncSession, message_id: str, principal: Principal
) -> list[DeliveryEvent]:
    """Cancel a queued or scheduled message; its unsent recipients end `cancelled`, each with a
    `cancelled` event. Returns the events recorded (none when it was already cancelled: the same
    answer again). A 409 when it is being sent or is finished."""
    row = await _state(session, message_id, principal)
    now = utcnow()
    why = f"cancelled by {principal.name}"
    done = await session.execute(
        update(Message)
        .where(Message.id == row.id, Message.status == "queued")
        .values(status="cancelled", lease_until=None, last_error=why)
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    )
    if done.first() is None:
        row = await _state(session, message_id, principal)
        if row.status == "cancelled":
            return []
        if row.status == "sending":
            raise _being_sent(row, "cancelled")
        raise _finished(row, "cancelled")
    recipients = await session.execute(
        update(Recipient)
        .where(Recipient.message_pk == row.id, Recipient.status.in_(WAITING))
        .values(status="cancelled", response=why, updated_at=now)
        .returning(Recipient.id, Recipient.email)
        .execution_options(synchronize_session=False)
    )
    profile = row.server or BUILTIN
    events = [
        DeliveryEvent(
            row.id,
            "cancelled",
            recipient_pk=recipient_pk,
            email=email,
            occurred_at=now,
            profile=profile,
            reason=why,
        )
        for recipient_pk, email in recipients
    ]
    return await record_events(session, events)


async def retry(
    session: AsyncSession, message_id: str, principal: Principal, notifier: Notifier
) -> None:
    """Make a deferred message (queued, tried before) due now rather than at its next attempt;
    the notifier wakes the dispatcher once that is committed."""
    row = await _state(session, message_id, principal)
    done = await session.execute(
        update(Message)
        .where(Message.id == row.id, Message.status == "queued", Message.attempts > 0)
        .values(next_attempt_at=utcnow())
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    )
    if done.first() is not None:
        notifier.after_commit(session)
        return
    row = await _state(session, message_id, principal)
    if row.status == "sending":
        raise _being_sent(row, "retried")
    if row.status != "queued":
        raise _finished(row, "retried")
    if shown(row.status, row.attempts, row.next_attempt_at, utcnow()) == SCHEDULED:
        when = f"{row.next_attempt_at:%Y-%m-%dT%H:%M:%SZ}"
        raise _refused(row, "retried", f"it is scheduled for {when} and was never tried")
    raise _refused(row, "retried", "it was never tried: it goes as soon as a worker is free")


async def resend(
    session: AsyncSession, settings: Settings, caller: Caller, message_id: str, notifier: Notifier
) -> tuple[Resent, EventCounts]:
    """Send a failed or bounced message again, as a new message, to the recipients it did not
    reach. It goes through the intake like any POST (limits, sender bounds, the suppression
    list) and then carries the old one's content as it was stored (its template rendered then,
    per-recipient parts included): the same mail, not a new rendering. A message is resent once;
    the two are linked both ways (resentFrom, resentAs). The notifier wakes the dispatcher once
    the new message is committed. Returns the answer and the new message's events."""
    old = await session.scalar(
        select(Message).where(Message.id == message_id).options(selectinload(Message.recipients))
    )
    principal = caller.principal
    if old is None or not (principal.is_admin or old.created_by == principal.name):
        raise NotFound(f"no message {message_id!r}")
    targets = await _unreached(session, old)
    body = _request(old, targets)
    taken = await service.enqueue(session, settings, caller, body)
    accepted = taken.answer
    await _carry_over(session, old, accepted.id, targets)
    notifier.after_commit(session)
    answer = Resent(
        id=accepted.id,
        status=accepted.status,
        message_id=accepted.message_id,
        suppressed=accepted.suppressed,
        resent_from=old.id,
        recipients=[r.email for r in targets],
    )
    return answer, taken.events


async def _unreached(session: AsyncSession, old: Message) -> list[Recipient]:
    """The recipients a resend goes to; refuses (409, 410) a message that cannot be resent."""

    def refused(why: str) -> Conflict:
        return Conflict(
            f"message {old.id} cannot be resent: {why}",
            details=[{"field": "status", "message": old.status}],
        )

    if old.status in ("queued", "sending"):
        raise refused("it is still being delivered (cancel it, or wait for its result)")
    if old.status == "cancelled":
        raise refused("it was cancelled; post it again")
    if old.resent_as is not None:
        raise refused(f"it was resent already, as {old.resent_as}")
    if old.payload.get("test"):
        raise refused("it is a test mail; send another test")
    if old.body_purged_at is not None:
        raise Gone(
            f"message {old.id} cannot be resent: its body was purged on "
            f"{old.body_purged_at:%Y-%m-%d} (POSTROOM_RETENTION_BODY_DAYS)",
            details=[{"field": "bodyPurgedAt", "message": "purged"}],
        )
    bounced = set(
        await session.scalars(
            select(EventRow.recipient_pk).where(
                EventRow.message_pk == old.id, EventRow.type == "bounced"
            )
        )
    )
    targets = [r for r in old.recipients if r.status in UNREACHED or r.id in bounced]
    if not targets:
        raise refused("no recipient failed or bounced: there is nothing to send again")
    return targets


def _routed(payload: dict[str, Any], emails: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The payload's recipient lists, each kept to `emails`."""
    return {
        kind: [a for a in payload[kind] if a["email"] in emails]
        for kind in ROUTING
        if kind in payload
    }


def _request(old: Message, targets: list[Recipient]) -> MessageIn:
    """The old message as a POST body to the targets: what the intake checks it by."""
    payload = old.payload
    routed = _routed(payload, {r.email for r in targets})
    body: dict[str, Any] = {
        key: payload[key]
        for key in ("from", "replyTo", "subject", "text", "html", "attachments", "headers")
        if key in payload
    }
    body |= {("recipients" if kind == "group" else kind): items for kind, items in routed.items()}
    if "text" not in body and "html" not in body:
        body["text"] = ""  # per-recipient content only: _carry_over puts it back
    for key, value in (
        ("ignoreSuppressions", payload.get("ignoreSuppressions")),
        ("listUnsubscribe", payload.get("listUnsubscribe")),
        ("server", old.server),
        ("resource", old.resource),
    ):
        if value is not None:
            body[key] = value
    if payload.get("themeSet"):
        body["theme"] = old.theme
    return MessageIn.model_validate(body)


async def _carry_over(
    session: AsyncSession, old: Message, new_id: str, targets: list[Recipient]
) -> None:
    """Give the new message the old one's stored content and per-recipient data, and link the
    two. The link is taken only while the old message has none: of two resends at once, the
    second finds it taken and fails (409), and its new message goes with its rollback."""
    emails = {r.email for r in targets}
    payload = dict(old.payload) | _routed(old.payload, emails)
    if "personal" in payload:
        payload["personal"] = {e: p for e, p in payload["personal"].items() if e in emails}
    await session.execute(
        update(Message)
        .where(Message.id == new_id)
        .values(payload=payload, subject=old.subject, template=old.template, resent_from=old.id)
        .execution_options(synchronize_session=False)
    )
    personal = [{"row_email": r.email, "row_data": r.data} for r in targets if r.data]
    if personal:
        await session.execute(
            update(RECIPIENTS)
            .where(RECIPIENTS.c.message_pk == new_id, RECIPIENTS.c.email == bindparam("row_email"))
            .values(data=bindparam("row_data")),
            personal,
        )
    linked = await session.execute(
        update(Message)
        .where(Message.id == old.id, Message.resent_as.is_(None))
        .values(resent_as=new_id)
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    )
    if linked.first() is None:
        raise Conflict(
            f"message {old.id} cannot be resent: it was resent meanwhile",
            details=[{"field": "resentAs", "message": "taken"}],
        )
