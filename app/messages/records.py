"""The sending records as a caller may see them: rules the API routes and the console share."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.delivery.models import Message
from app.events.models import EventRow
from app.messages import service
from app.messages.schemas import EventOut, MessageOut, MessagePage, MessageSummary
from app.messages.service import RecordFilter
from app.messages.statuses import shown
from app.security import Principal

S = TypeVar("S", bound=MessageSummary)


async def search(
    session: AsyncSession,
    principal: Principal,
    where: RecordFilter,
    *,
    limit: int,
    cursor: str | None,
) -> MessagePage:
    """A sender sees the messages it posted; an admin sees all, or one user's with createdBy."""
    if not principal.is_admin:
        if where.created_by not in (None, principal.name):
            return MessagePage(items=[], next_cursor=None)
        where = dataclasses.replace(where, created_by=principal.name)
    rows, next_cursor = await service.search(session, where, limit=limit, cursor=cursor)
    now = utcnow()
    items = [_shown(MessageSummary.model_validate(row, from_attributes=True), now) for row in rows]
    return MessagePage(items=items, next_cursor=next_cursor)


async def detail(session: AsyncSession, message_id: str, principal: Principal) -> MessageOut:
    """A message's status, its recipients' results and events, and every attempt."""
    message, events = await service.get_message(session, message_id, principal)
    return _out(message, events)


def _shown(answer: S, now: datetime) -> S:
    """`scheduled` for a queued message whose sendAt is ahead (app/messages/statuses.py)."""
    if answer.next_attempt_at is not None:
        answer.status = shown(answer.status, answer.attempts, answer.next_attempt_at, now)
    return answer


def _out(message: Message, events: list[EventRow]) -> MessageOut:
    answer = _shown(MessageOut.model_validate(message, from_attributes=True), utcnow())
    queued = EventOut.accepted(message.created_at)
    per_recipient: dict[int | None, list[EventOut]] = {}
    for event in events:
        per_recipient.setdefault(event.recipient_pk, []).append(
            EventOut.model_validate(event, from_attributes=True)
        )
    for row, out in zip(message.recipients, answer.recipients, strict=True):
        out.events = [queued, *per_recipient.get(row.id, [])]
    answer.events = per_recipient.get(None, [])
    return answer
