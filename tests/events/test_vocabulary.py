"""The event vocabulary: the transports' statuses map onto it, and nothing outside it is stored."""

from __future__ import annotations

from typing import get_args

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from app.db import transaction, utcnow
from app.delivery.events import event_type
from app.delivery.vocabulary import EVENT_TYPES, DeliveryEvent
from app.events.models import EVENTS
from app.transports.result import RecipientStatus
from app.wiring import Core

EXPECTED = {
    "sent": "sent",
    "queued": "sent",
    "rejected": "rejected",
    "invalid": "rejected",
    "failed": "failed",
    "deferred": "deferred",
    "suppressed": "suppressed",
}


def test_every_transport_status_maps_onto_an_event_type() -> None:
    assert set(EXPECTED) == set(get_args(RecipientStatus)), "a status without an expectation"
    for status, expected in EXPECTED.items():
        assert event_type(status) == expected, status  # type: ignore[arg-type]


def test_the_vocabulary_is_anymails() -> None:
    """anymail's, and Postroom's own `suppressed` and `cancelled` (its list, a user's cancel)."""
    assert EVENT_TYPES == (
        "queued", "sent", "rejected", "failed", "bounced", "deferred", "delivered",
        "autoresponded", "opened", "clicked", "complained", "unsubscribed", "suppressed",
        "cancelled", "unknown",
    )  # fmt: skip


def test_an_event_outside_the_vocabulary_is_refused_where_it_is_made() -> None:
    with pytest.raises(ValueError, match="not an event type"):
        DeliveryEvent("m", "bounce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a bounce type"):
        DeliveryEvent("m", "bounced", bounce_type="permanent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 255"):
        DeliveryEvent("m", "bounced", source="ses", provider_event_id="x" * 256)


@pytest.mark.anyio
@pytest.mark.parametrize("column", ["type", "bounce_type"])
async def test_the_database_refuses_a_type_outside_the_vocabulary(
    runtime: Core, column: str
) -> None:
    row = {
        "message_pk": None,
        "type": "unknown",
        "occurred_at": utcnow(),
        "recorded_at": utcnow(),
        "source": "test",
    } | {column: "nonsense"}
    with pytest.raises(IntegrityError, match=r"(?i)check"):
        async with transaction(runtime.sessions) as session:
            await session.execute(insert(EVENTS), [row])
