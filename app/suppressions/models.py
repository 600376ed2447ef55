"""The suppression list: addresses Postroom does not send to, globally or through one profile.

An address is stored in one spelling (`app.schemas.comparable`: lower case, the domain in
A-labels), so the dispatcher's check is an exact, indexed match. The global scope is the empty
string, not NULL: a unique constraint treats NULLs as distinct, and one address must not be
suppressed twice in one scope.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import CheckConstraint, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import ID, Base, table_of, utcnow

Reason = Literal["hard_bounce", "complaint", "unsubscribe", "manual"]
REASONS: tuple[Reason, ...] = get_args(Reason)

GLOBAL = ""
"""The `scope` of a suppression that holds whichever profile the message goes through."""


class Suppression(Base):
    """One suppressed address in one scope, with why, from what, and when."""

    __tablename__ = "suppressions"
    __table_args__ = (
        UniqueConstraint("address", "scope", name="uq_suppressions_address_scope"),
        CheckConstraint(f"reason IN ({', '.join(repr(r) for r in REASONS)})", name="reason"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    """In the comparable spelling; indexed first by uq_suppressions_address_scope."""
    scope: Mapped[str] = mapped_column(String(50), default=GLOBAL)
    """A profile name (or `builtin`), or GLOBAL."""
    reason: Mapped[str] = mapped_column(String(12))
    source: Mapped[str] = mapped_column(String(20))
    """What added it: an event's source (`postroom`, `ses`, `dsn`, ...), `api` or `import`."""
    event_id: Mapped[str | None] = mapped_column(String(255))
    """The reporter's id of the event that added it, when it had one."""
    message_pk: Mapped[str | None] = mapped_column(ID)
    """The message the event was about (not a foreign key: the entry outlives the message)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SoftBounce(Base):
    """One soft bounce of an address: N of them within M days suppress it
    (POSTROOM_SOFT_BOUNCE_LIMIT, POSTROOM_SOFT_BOUNCE_DAYS). Older rows are pruned as new ones
    come, so the table holds only the window."""

    __tablename__ = "soft_bounces"
    __table_args__ = (Index("ix_soft_bounces_address_at", "address", "occurred_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    occurred_at: Mapped[datetime]


SUPPRESSIONS, SOFT_BOUNCES = table_of(Suppression), table_of(SoftBounce)
