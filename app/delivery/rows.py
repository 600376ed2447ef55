"""A claimed message and its recipients as an attempt reads them: frozen rows the outbox's load
reads with column selects, not ORM objects. An ORM object costs an identity-map entry, its
instance state and an instrumented attribute read for every field: a load of 128 messages cost
68 us of CPU per message with them and 57 without (the best of 5 alternating runs each), and
every later read of a field is a plain slot.

The protocols name what the code the raw view shares with the send (app/delivery/shape.py,
app/delivery/verp.py) reads of a message and a recipient: these rows and the ORM models
(app/delivery/models.py) both have it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Row

from app.delivery.models import Message, Recipient


class MessageRow(Protocol):
    """What composing a message reads of its row."""

    @property
    def id(self) -> str: ...

    @property
    def message_id(self) -> str: ...

    @property
    def server(self) -> str | None: ...

    @property
    def created_at(self) -> datetime: ...


class RecipientRow(Protocol):
    """What composing and addressing a message read of a recipient's row."""

    @property
    def id(self) -> int: ...

    @property
    def email(self) -> str: ...

    @property
    def data(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A claimed message's columns that its attempt and the finish read."""

    id: str
    message_id: str
    server: str | None
    """The profile it goes through; None: the built-in server."""
    theme: str | None
    created_at: datetime
    send_at: datetime | None
    next_attempt_at: datetime
    sent_at: datetime | None

    COLUMNS = (
        Message.id,
        Message.message_id,
        Message.server,
        Message.theme,
        Message.created_at,
        Message.send_at,
        Message.next_attempt_at,
        Message.sent_at,
    )
    """What the load selects, in the order of the fields."""

    @classmethod
    def of(cls, row: Row[*tuple[Any, ...]]) -> QueuedMessage:
        """From a row that selected COLUMNS (and maybe more)."""
        return cls(
            row.id,
            row.message_id,
            row.server,
            row.theme,
            row.created_at,
            row.send_at,
            row.next_attempt_at,
            row.sent_at,
        )

    @property
    def starts_at(self) -> datetime:
        """As `Message.starts_at`: its `sendAt`, else when it was accepted."""
        return self.send_at or self.created_at


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """A recipient of a claimed message, as it stood when the attempt began."""

    id: int
    email: str
    kind: str
    status: str
    data: dict[str, Any] | None

    COLUMNS = (Recipient.id, Recipient.email, Recipient.kind, Recipient.status, Recipient.data)
    """What the load selects, in the order of the fields."""

    @classmethod
    def of(cls, row: Row[*tuple[Any, ...]]) -> QueuedRecipient:
        """From a row that selected COLUMNS (and maybe more)."""
        return cls(row.id, row.email, row.kind, row.status, row.data)
