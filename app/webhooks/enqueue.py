"""Putting events in the webhook queue, in the transaction that records them.

`enqueue_events` is called by `record_events`, on the dispatcher's hot path: one INSERT ... SELECT
writes a delivery for every (event, enabled endpoint that takes its type), the events handed in
as one JSON parameter (the same statement whatever their count, so PostgreSQL plans it once).
When no enabled endpoint takes any of the events' types, nothing is built and nothing is sent to
the database: the subscribed types are known from `SubscribedTypes`, re-read at most once a
second, so a change made on any replica holds everywhere within a second.
"""

from __future__ import annotations

import functools
import json
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    FromClause,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    true,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.webhooks.models import DELIVERIES, ENDPOINTS, SUBSCRIPTIONS
from app.webhooks.schemas import MessageEventData, WebhookEvent

if TYPE_CHECKING:
    from app.delivery.vocabulary import DeliveryEvent

FRESH_FOR = 1.0
"""Seconds the subscribed types are reused before they are read again."""


class SubscribedTypes:
    """The event types some enabled endpoint takes, per database (engine), read at most every
    FRESH_FOR seconds; `forget` makes the next read fresh (after a change in this process)."""

    def __init__(self) -> None:
        self._known: weakref.WeakKeyDictionary[Engine, tuple[float, frozenset[str]]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, session: AsyncSession) -> frozenset[str]:
        engine = _engine(session)
        known = self._known.get(engine)
        now = time.monotonic()
        if known is not None and now - known[0] < FRESH_FOR:
            return known[1]
        query = (
            select(SUBSCRIPTIONS.c.event_type)
            .distinct()
            .join(ENDPOINTS, ENDPOINTS.c.id == SUBSCRIPTIONS.c.endpoint_id)
            .where(ENDPOINTS.c.enabled == true())
        )
        types = frozenset(await session.scalars(query))
        self._known[engine] = (now, types)
        return types

    def forget(self, session: AsyncSession) -> None:
        self._known.pop(_engine(session), None)


SUBSCRIBED = SubscribedTypes()
"""The process's knowledge of the subscribed types (keyed per database, so each test app and
each replica has its own; nothing in it outlives FRESH_FOR)."""


def _engine(session: AsyncSession) -> Engine:
    bind = session.get_bind()
    return bind.engine if isinstance(bind, Connection) else bind


def event_type(kind: str) -> str:
    """The payload's `type` for a delivery event type."""
    return f"message.{kind}"


def event_body(event: DeliveryEvent) -> str:
    """The delivery's JSON, as it will be signed and sent."""
    payload = WebhookEvent(
        type=event_type(event.type),
        timestamp=event.occurred_at,
        data=MessageEventData(
            message_id=event.message_pk,
            recipient=event.email,
            event=event.type,
            bounce_type=event.bounce_type,
            reason=event.reason,
            diagnostic_code=event.diagnostic_code,
            source=event.source,
            profile=event.profile,
            provider_event_id=event.provider_event_id,
        ),
    )
    return payload.model_dump_json(by_alias=True)


async def enqueue_events(session: AsyncSession, events: Sequence[DeliveryEvent]) -> None:
    """A delivery per (event, enabled endpoint subscribed to its type), in the session's
    transaction; nothing at all when no enabled endpoint takes any of their types."""
    if not events:
        return
    subscribed = await SUBSCRIBED.get(session)
    wanted = [event for event in events if event.type in subscribed]
    if not wanted:
        return
    rows = [
        {"n": n, "kind": event.type, "message_pk": event.message_pk, "body": event_body(event)}
        for n, event in enumerate(wanted)
    ]
    statement = _insert(session.get_bind().dialect.name == "postgresql")
    await session.execute(statement, {"events": json.dumps(rows), "now": utcnow()})


@functools.cache
def _insert(postgres: bool) -> Any:
    """INSERT INTO webhook_deliveries ... SELECT from the events (a JSON array parameter) joined
    with the subscriptions of enabled endpoints, in the events' order. Built once per dialect:
    building it took longer than running it."""
    events = _events_table(postgres)
    now = bindparam("now", type_=DELIVERIES.c.created_at.type)
    kind, message_pk, body, n = (events.c.kind, events.c.message_pk, events.c.body, events.c.n)
    chosen = (
        select(
            webhook_id(postgres),
            SUBSCRIPTIONS.c.endpoint_id,
            literal("message.").concat(kind),
            message_pk,
            body,
            literal("queued"),
            literal(0),
            now,
            now,
        )
        .select_from(events)
        .join(SUBSCRIPTIONS, SUBSCRIPTIONS.c.event_type == kind)
        .join(
            ENDPOINTS,
            and_(ENDPOINTS.c.id == SUBSCRIPTIONS.c.endpoint_id, ENDPOINTS.c.enabled == true()),
        )
        .order_by(n, SUBSCRIPTIONS.c.endpoint_id)
    )
    return insert(DELIVERIES).from_select(
        [
            "webhook_id",
            "endpoint_id",
            "event_type",
            "message_pk",
            "body",
            "status",
            "attempts",
            "next_attempt_at",
            "created_at",
        ],
        chosen,
    )


def _events_table(postgres: bool) -> FromClause:
    """The `events` parameter (a JSON array of objects) as a table with columns n, kind,
    message_pk, body: json_to_recordset on PostgreSQL, json_each + json_extract on SQLite."""
    parameter = bindparam("events", type_=Text)
    if postgres:
        return (
            func.json_to_recordset(cast(parameter, JSON))
            .table_valued(
                column("n", Integer),
                column("kind", String),
                column("message_pk", String),
                column("body", Text),
            )
            .render_derived(name="events", with_types=True)
        )
    each = func.json_each(parameter).table_valued("value").alias("each")
    fields = ("n", "kind", "message_pk", "body")
    return (
        select(*(func.json_extract(each.c.value, f"$.{name}").label(name) for name in fields))
        .select_from(each)
        .subquery("events")
    )


def webhook_id(postgres: bool) -> ColumnElement[str]:
    """A new `webhook-id`: `msg_` and 32 random hex digits (a random UUID's, on PostgreSQL),
    made by the database."""
    if postgres:
        random_hex = func.replace(cast(func.gen_random_uuid(), String), "-", "")
    else:
        random_hex = func.lower(func.hex(func.randomblob(16)))
    return literal("msg_").concat(random_hex)
