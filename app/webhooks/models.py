"""Webhook endpoints, the event types each takes, and the outgoing deliveries (a queue on the
outbox machinery: app/delivery/queue.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import ID, Base, new_id, table_of, utcnow
from app.delivery.queue import Queue

DELIVERY_STATUSES = ("queued", "sending", "paused", "delivered", "failed")
"""queued: waiting for its (next) attempt; sending: claimed under a lease; paused: its endpoint is
disabled (queued again when it is enabled); delivered: the endpoint answered 2xx; failed: given
up (too old, or the endpoint answered 410 Gone)."""


class WebhookEndpoint(Base):
    """A URL that receives signed events. `secret` is the Standard Webhooks signing secret
    (`whsec_...`), encrypted as a Fernet token: shown once at creation and on rotation."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(1000), default="")
    enabled: Mapped[bool] = mapped_column(default=True)
    secret: Mapped[str] = mapped_column(Text)
    failing_since: Mapped[datetime | None]
    """The first failed attempt since the last delivered one: the auto-disable clock."""
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    """Why the endpoint was disabled automatically (null when an admin disabled it)."""
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSubscription(Base):
    """One event type an endpoint takes: a row each, so the enqueue joins on it."""

    __tablename__ = "webhook_subscriptions"

    endpoint_id: Mapped[str] = mapped_column(
        ID, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    event_type: Mapped[str] = mapped_column(String(30), primary_key=True, index=True)


class WebhookDelivery(Base):
    """One event for one endpoint: the exact JSON body, and where its delivery stands.

    The outbox columns are the messages' (status, attempts, next_attempt_at, lease_until): claimed
    under a lease, finished fenced on `attempts`, swept back when the lease expires. `id` orders
    the deliveries of one message to one endpoint: the next waits until the one before is done.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_order", "endpoint_id", "message_pk", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(40), unique=True)
    """The `webhook-id` header: `msg_` and 32 hex digits, the same on every retry."""
    endpoint_id: Mapped[str] = mapped_column(
        ID, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_type: Mapped[str] = mapped_column(String(40))
    """The payload's `type`: `message.<event>`, or `webhook.test`."""
    message_pk: Mapped[str | None] = mapped_column(ID)
    """The message the event is about (no foreign key: the log outlives a purged message)."""
    body: Mapped[str] = mapped_column(Text)
    """The JSON sent, byte for byte (UTF-8), as it was signed."""
    status: Mapped[str] = mapped_column(String(10), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None]
    response_code: Mapped[int | None]
    """The HTTP status of the last attempt (null: no answer)."""
    error: Mapped[str | None] = mapped_column(Text)
    """Why the last attempt failed."""
    duration_ms: Mapped[float | None]
    delivered_at: Mapped[datetime | None]


DELIVERIES = table_of(WebhookDelivery)
ENDPOINTS = table_of(WebhookEndpoint)
SUBSCRIPTIONS = table_of(WebhookSubscription)

DELIVERY_QUEUE = Queue(
    WebhookDelivery,
    WebhookDelivery.id,
    WebhookDelivery.status,
    WebhookDelivery.attempts,
    WebhookDelivery.next_attempt_at,
    WebhookDelivery.lease_until,
)
