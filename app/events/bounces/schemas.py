"""What POST /api/v1/hooks/dsn answers."""

from __future__ import annotations

from typing import Literal

from app.delivery.vocabulary import BounceType, EventType
from app.events.bounces.service import Ingested
from app.schemas import CamelModel


class RecordedEvent(CamelModel):
    email: str | None
    type: EventType
    bounce_type: BounceType | None
    diagnostic_code: str | None


class IngestedOut(CamelModel):
    kind: Literal["dsn", "arf"]
    report_id: str
    """The report's own Message-ID (else a hash of it): the same report posted again is
    recognised by it and stores nothing."""
    message_id: str | None
    """Postroom's id of the message the report is about; null when it matched none."""
    events: list[RecordedEvent]
    """The events stored by this request (empty for a report already recorded)."""

    @classmethod
    def of(cls, done: Ingested) -> IngestedOut:
        return cls(
            kind=done.report.kind,
            report_id=done.report.report_id,
            message_id=done.message_pk,
            events=[
                RecordedEvent(
                    email=e.email,
                    type=e.type,
                    bounce_type=e.bounce_type,
                    diagnostic_code=e.diagnostic_code,
                )
                for e in done.events
            ],
        )
