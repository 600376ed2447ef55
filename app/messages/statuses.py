"""The status a sending record shows: the outbox's own, except that a queued message that was
never tried and whose `sendAt` is still ahead shows `scheduled`. The outbox itself knows no such
status: a scheduled message is a queued one that is not due yet, so every worker's claim (due
rows only) holds it back with no rule of its own."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_

from app.delivery.models import Message

SCHEDULED = "scheduled"


def status_at(send_at: datetime | None) -> str:
    """What POST /messages answers for a message stored with this `sendAt`."""
    return SCHEDULED if send_at is not None else "queued"


def shown(status: str, attempts: int, next_attempt_at: datetime, now: datetime) -> str:
    """The status a record shows for these outbox columns."""
    if status == "queued" and attempts == 0 and next_attempt_at > now:
        return SCHEDULED
    return status


def shown_as(status: str, now: datetime) -> ColumnElement[bool]:
    """The records whose shown status is `status` (a search filter)."""
    scheduled = and_(
        Message.status == "queued", Message.attempts == 0, Message.next_attempt_at > now
    )
    if status == SCHEDULED:
        return scheduled
    if status == "queued":
        return and_(
            Message.status == "queued",
            or_(Message.attempts > 0, Message.next_attempt_at <= now),
        )
    return Message.status == status
