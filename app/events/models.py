"""The delivery_events table; the vocabulary of its `type` and `bounce_type` is
app/delivery/vocabulary.py (its CHECK constraints read it from there)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import ID, Base, table_of, utcnow
from app.delivery.vocabulary import (
    BOUNCE_TYPES,
    DIAGNOSTIC_LENGTH,
    EVENT_ID_LENGTH,
    EVENT_TYPES,
)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class EventRow(Base):
    """One event about one recipient of a message (or, recipient_pk null, the whole message)."""

    __tablename__ = "delivery_events"
    __table_args__ = (
        CheckConstraint(_one_of("type", EVENT_TYPES), name="type"),
        CheckConstraint(_one_of("bounce_type", BOUNCE_TYPES), name="bounce_type"),
        UniqueConstraint("source", "provider_event_id", name="uq_delivery_events_provider_event"),
        Index("ix_delivery_events_message_type", "message_pk", "type"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_pk: Mapped[str | None] = mapped_column(
        ID, ForeignKey("messages.id", ondelete="CASCADE")
    )
    """Null: an event Postroom could not match to a message (stored as `unknown`, not dropped).
    Indexed by ix_delivery_events_message_type (message_pk first)."""
    recipient_pk: Mapped[int | None] = mapped_column(
        ForeignKey("recipients.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str | None] = mapped_column(String(320))
    """The recipient's address as the event gave it: what a suppression is keyed on, and kept
    when the event matches no recipient row."""
    type: Mapped[str] = mapped_column(String(20))
    bounce_type: Mapped[str | None] = mapped_column(String(12))
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(20))
    profile: Mapped[str | None] = mapped_column(String(50))
    """The server profile the event is about (`builtin` for the built-in server)."""
    provider_event_id: Mapped[str | None] = mapped_column(String(EVENT_ID_LENGTH))
    """The reporter's own id for the event: unique per source, so a retried webhook is stored once.
    Null for Postroom's own events."""
    reason: Mapped[str | None] = mapped_column(Text)
    diagnostic_code: Mapped[str | None] = mapped_column(String(DIAGNOSTIC_LENGTH))


EVENTS = table_of(EventRow)
"""The table itself, for Core statements over many rows."""
