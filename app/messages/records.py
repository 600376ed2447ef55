"""The sending records as a caller may see them: the search (filters, cursor paging) and a
message's detail, the rules the API routes and the console share."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.db import utcnow
from app.delivery.models import Message, Recipient
from app.delivery.vocabulary import EventType
from app.errors import BadRequest, NotFound
from app.events.models import EventRow
from app.events.service import events_of
from app.identity import Principal
from app.messages.schemas import EventOut, MessageOut, MessagePage, MessageSummary
from app.messages.statuses import shown, shown_as

QUEUED: EventType = "queued"
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
    rows, next_cursor = await _find(session, where, limit=limit, cursor=cursor)
    now = utcnow()
    items = [_shown(MessageSummary.model_validate(row, from_attributes=True), now) for row in rows]
    return MessagePage(items=items, next_cursor=next_cursor)


async def detail(session: AsyncSession, message_id: str, principal: Principal) -> MessageOut:
    """A message's status, its recipients' results and events, and every attempt."""
    message, events = await get_message(session, message_id, principal)
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


async def _find(
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
