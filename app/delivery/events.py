"""The events Postroom's own attempts produce: the transports' per-recipient statuses mapped onto
the event vocabulary, in one place."""

from __future__ import annotations

from datetime import datetime
from typing import assert_never

from app.events.models import EventType
from app.events.service import DeliveryEvent
from app.transports.result import RecipientResult, RecipientStatus


def event_type(status: RecipientStatus) -> EventType:
    """What a transport's status for one recipient is as an event.

    `queued` is a provider that took the message to send later: for Postroom the hand-off is done,
    so it is `sent` (anymail's `queued` is Postroom's own acceptance). `invalid` is a refusal of
    the address: `rejected`, as a 5xx to RCPT is."""
    match status:
        case "sent" | "queued":
            return "sent"
        case "rejected" | "invalid":
            return "rejected"
        case "failed":
            return "failed"
        case "deferred":
            return "deferred"
        case "suppressed":
            return "suppressed"
        case _:
            assert_never(status)


def attempt_event(
    message_pk: str,
    recipient_pk: int,
    email: str,
    result: RecipientResult,
    *,
    profile: str,
    at: datetime,
) -> DeliveryEvent:
    """One recipient's outcome of one attempt, as the event recorded with it."""
    return DeliveryEvent(
        message_pk=message_pk,
        type=event_type(result.status),
        recipient_pk=recipient_pk,
        email=email,
        occurred_at=at,
        profile=profile,
        reason=result.message or None,
        diagnostic_code=None if result.code is None else str(result.code),
    )
