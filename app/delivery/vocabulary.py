"""The closed event vocabulary: what happened to a recipient, whoever reported it.

It is django-anymail's (its EventType), so an event means the same whichever provider reported
it. Defined once, here, below every package that produces events (delivery's own attempts, the
provider hooks, the bounce reports, the lifecycle and unsubscribe actions): the table's CHECK
constraints, the API's validation and the dispatcher's mapping all read it from this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from app.db import utcnow

EventType = Literal[
    "queued",
    "sent",
    "rejected",
    "failed",
    "bounced",
    "deferred",
    "delivered",
    "autoresponded",
    "opened",
    "clicked",
    "complained",
    "unsubscribed",
    "suppressed",
    "cancelled",
    "unknown",
]
"""queued: accepted by Postroom; sent: the first hop (relay or provider) took it; rejected: refused
for this recipient before sending (a 5xx RCPT, a provider's invalid address, the suppression list
of a provider); failed: could not be sent for another reason; bounced: the receiving side refused
it after the hand-off (a DSN, a provider's bounce); deferred: refused for now, retried; delivered:
the receiving server accepted it; autoresponded, opened, clicked, complained, unsubscribed: what
the recipient did; suppressed: not sent because of Postroom's suppression list; cancelled: not
sent because a user cancelled the message (both Postroom's own: anymail has neither); unknown: an
event that could not be classified or matched to a message."""

EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

BounceType = Literal["hard", "soft", "undetermined"]
"""hard: the address will never take mail (suppress it); soft: for now (a full mailbox);
undetermined: the report did not say."""

BOUNCE_TYPES: tuple[BounceType, ...] = get_args(BounceType)

OWN_SOURCE = "postroom"
"""The `source` of the events Postroom produces itself; providers' are their type (`ses`,
`sendgrid`, `mailgun`, `mandrill`), SMTP bounce reports `dsn`."""

REASON_LENGTH = 2000
DIAGNOSTIC_LENGTH = 1000
EVENT_ID_LENGTH = 255

_TYPES = frozenset(EVENT_TYPES)
_BOUNCES = frozenset(BOUNCE_TYPES)


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One event as a producer reports it. `occurred_at` defaults to when it was made; `reason` and
    `diagnostic_code` are cut to their column's length when stored."""

    message_pk: str | None
    type: EventType
    recipient_pk: int | None = None
    email: str | None = None
    occurred_at: datetime = field(default_factory=utcnow)
    source: str = OWN_SOURCE
    profile: str | None = None
    bounce_type: BounceType | None = None
    provider_event_id: str | None = None
    reason: str | None = None
    diagnostic_code: str | None = None

    def __post_init__(self) -> None:
        # The Literal types hold for checked code; a provider parser's mistake must fail here,
        # where it is made, not as a CHECK violation that rolls back a whole batch.
        if self.type not in _TYPES:
            raise ValueError(f"{self.type!r} is not an event type")
        if self.bounce_type is not None and self.bounce_type not in _BOUNCES:
            raise ValueError(f"{self.bounce_type!r} is not a bounce type")
        if self.provider_event_id is not None and len(self.provider_event_id) > EVENT_ID_LENGTH:
            raise ValueError(f"a provider event id is at most {EVENT_ID_LENGTH} characters")

    @property
    def key(self) -> tuple[str, str] | None:
        """What makes a reporter's event unique, when it has an id of its own."""
        return None if self.provider_event_id is None else (self.source, self.provider_event_id)

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            "message_pk": self.message_pk,
            "recipient_pk": self.recipient_pk,
            "email": self.email,
            "type": self.type,
            "bounce_type": self.bounce_type,
            "occurred_at": self.occurred_at,
            "recorded_at": now,
            "source": self.source,
            "profile": self.profile,
            "provider_event_id": self.provider_event_id,
            "reason": None if self.reason is None else self.reason[:REASON_LENGTH],
            "diagnostic_code": (
                None if self.diagnostic_code is None else self.diagnostic_code[:DIAGNOSTIC_LENGTH]
            ),
        }


def tally(events: Iterable[DeliveryEvent]) -> Counter[tuple[str, str]]:
    """How many events of each (type, profile): what the metrics count once they are committed."""
    return Counter((event.type, event.profile or "") for event in events)
