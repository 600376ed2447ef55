"""The events Postroom's own attempts produce: the transports' per-recipient statuses mapped onto
the event vocabulary, in one place; and the Ledger they go to.

Recording an event is more than a row: it may put the address on the suppression list and queue
webhook deliveries, and both live above delivery (app.events, app.suppressions, app.webhooks). So
delivery writes to a `Ledger` that whoever starts a dispatcher hands it (app.events.service's
LEDGER), and reads the suppression list through it too: delivery imports neither package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol, assert_never

from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.vocabulary import DeliveryEvent, EventType
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


class Suppressed(Protocol):
    """The suppression list's entries for some addresses (app.suppressions.service.Listed)."""

    def why(self, email: str, profile: str) -> str | None:
        """Why `email` is not sent to through `profile`; None when it may be."""
        ...


class Ledger(Protocol):
    """Where delivery records the events of its attempts and learns who is suppressed."""

    async def record(
        self, session: AsyncSession, events: Sequence[DeliveryEvent]
    ) -> list[DeliveryEvent]:
        """Store `events` in the session's transaction with what they say of the suppression list
        and the webhooks; returns those stored (a provider's repeated event is not)."""
        ...

    async def listed(self, session: AsyncSession, emails: Iterable[str]) -> Suppressed:
        """The suppression list's entries of `emails`."""
        ...
