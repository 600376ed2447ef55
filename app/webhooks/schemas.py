"""The webhooks API's edge, and the JSON every delivery carries (`WebhookEvent`)."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from app.delivery.vocabulary import EVENT_TYPES, BounceType, EventType
from app.schemas import CamelModel
from app.transports.urls import check_http_url

WebhookUrl = Annotated[
    str,
    Field(max_length=2000, pattern=r"^https?://\S+$"),
    AfterValidator(partial(check_http_url, query=True)),
]
"""Where deliveries go: http(s), a host httpx can encode, no credentials or fragment (a query is
fine). Its addresses are checked against the egress policy at save and at every connection."""


def _unique(values: list[EventType]) -> list[EventType]:
    return list(dict.fromkeys(values))


EventTypes = Annotated[list[EventType], Field(min_length=1), AfterValidator(_unique)]
"""Delivery event types (the vocabulary of GET /messages' `event` filter); each is sent as
`message.<type>`."""


class EndpointIn(CamelModel):
    url: WebhookUrl
    description: str = Field("", max_length=1000)
    event_types: EventTypes = Field(default_factory=lambda: list(EVENT_TYPES))
    """Default: every type."""
    enabled: bool = True


class EndpointPatch(CamelModel):
    """The fields given change. Enabling a disabled endpoint clears its reason and sends what
    waited for it."""

    url: WebhookUrl | None = None
    description: str | None = Field(None, max_length=1000)
    event_types: EventTypes | None = None
    enabled: bool | None = None


class EndpointOut(CamelModel):
    id: str
    url: str
    description: str
    event_types: list[EventType]
    enabled: bool
    disabled_reason: str | None
    """Why Postroom disabled it (continuous failures, or 410 Gone); null otherwise."""
    disabled_at: datetime | None
    failing_since: datetime | None
    """The first failed attempt since the last delivered one: three days of that disables it."""
    created_at: datetime
    updated_at: datetime


class EndpointCreated(EndpointOut):
    secret: str
    """The signing secret (`whsec_` + base64), shown this once: store it with the receiver."""


class EndpointList(CamelModel):
    items: list[EndpointOut]


DeliveryStatus = Literal["queued", "sending", "paused", "delivered", "failed"]


class DeliveryOut(CamelModel):
    id: int
    webhook_id: str
    """The `webhook-id` header, the same on every retry: the receiver's idempotency key."""
    event_type: str
    message_id: str | None
    status: DeliveryStatus
    attempts: int
    response_code: int | None
    """The HTTP status of the last attempt; null: no answer (timeout, refused connection)."""
    error: str | None
    duration_ms: float | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    """When the next attempt is due (queued deliveries only)."""
    delivered_at: datetime | None


class DeliveryList(CamelModel):
    items: list[DeliveryOut]
    next_before: int | None
    """Pass as `before` for the next (older) page; null on the last page."""


class TestQueued(CamelModel):
    delivery_id: int
    webhook_id: str


class MessageEventData(CamelModel):
    """What happened to one recipient of one message."""

    message_id: str | None
    """The message's id, as POST /api/v1/messages returned it (null: a report that matched no
    message)."""
    recipient: str | None
    event: EventType
    bounce_type: BounceType | None = None
    reason: str | None = None
    diagnostic_code: str | None = None
    source: str
    """`postroom` for its own attempts; the provider (`ses`, `sendgrid`, ...) or `dsn` otherwise."""
    profile: str | None = None
    provider_event_id: str | None = None


class TestEventData(CamelModel):
    endpoint_id: str
    message: str


class WebhookEvent(CamelModel):
    """The body of every delivery (minified JSON, signed as sent; Standard Webhooks headers)."""

    type: str
    """`message.<event type>` (`message.sent`, `message.bounced`, ...), or `webhook.test`."""
    timestamp: datetime
    """When the event happened (ISO 8601, UTC)."""
    data: MessageEventData | TestEventData
