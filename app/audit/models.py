"""The audit log: one row per change an admin (or the CLI, or Postroom itself) made to the
configuration, written in the transaction of the change, so neither is ever kept without the
other."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import JSON, CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.identity import Via

Action = Literal[
    "server.create",
    "server.update",
    "server.delete",
    "dkim.create",
    "dkim.rotate",
    "dkim.delete",
    "email_server.update",
    "branding.update",
    "user.create",
    "user.update",
    "user.delete",
    "token.create",
    "token.revoke",
    "template.create",
    "template.update",
    "template.delete",
    "theme.create",
    "theme.update",
    "theme.delete",
    "suppression.create",
    "suppression.delete",
    "suppression.import",
    "webhook.create",
    "webhook.update",
    "webhook.delete",
]
"""What was done, as `<target kind>.<verb>`."""
ACTIONS: tuple[Action, ...] = get_args(Action)
KINDS: tuple[str, ...] = tuple(dict.fromkeys(action.partition(".")[0] for action in ACTIONS))

VIAS: tuple[Via, ...] = get_args(Via)


class AuditEntry(Base):
    """Who changed what, when, from where. `changes` maps each field that changed to
    {"from": old, "to": new}, or to "changed" for a secret, whose values are never kept."""

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(f"via IN ({', '.join(repr(v) for v in VIAS)})", name="via"),
        Index("ix_audit_log_actor_id", "actor", "id"),
        Index("ix_audit_log_target_id", "target_kind", "target_name", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    """Increasing: the log reads newest first by it, and pages by it."""
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(100))
    """The user's name (the console's and the API's), or the CLI's or Postroom's."""
    via: Mapped[str] = mapped_column(String(10))
    address: Mapped[str | None] = mapped_column(String(64))
    """The client's address (as the records keep it), None from the command line."""
    action: Mapped[str] = mapped_column(String(40))
    target_kind: Mapped[str] = mapped_column(String(20))
    """The action's first part: server, user, suppression, ..."""
    target_name: Mapped[str | None] = mapped_column(String(320))
    """The profile, user, template, address, endpoint id ...; None for what there is one of
    (branding, the email_server settings) or a whole list (a suppression import)."""
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)
