from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class ServerProfile(Base):
    """A named mail server: its type, its sender, and its settings.

    `settings` holds the type's non-secret settings as the API names them (camelCase);
    `secrets` holds the secret ones, encrypted as one Fernet token.
    """

    __tablename__ = "server_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str] = mapped_column(String(1000), default="")
    type: Mapped[str] = mapped_column(String(20))
    sender_email: Mapped[str | None] = mapped_column(String(320))
    sender_name: Mapped[str | None] = mapped_column(String(200))
    signature: Mapped[str | None] = mapped_column(String(250))
    max_recipients_per_message: Mapped[int | None]
    fallback: Mapped[str | None] = mapped_column(String(50))
    theme: Mapped[str | None] = mapped_column(String(50))
    list_unsubscribe: Mapped[bool] = mapped_column(default=False)
    """Messages through it carry one-click unsubscribe links (RFC 8058) unless they say not."""
    rate_limit: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """Its RateLimit as the API shows it (camelCase); null: no limit."""
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    secrets: Mapped[str | None] = mapped_column(Text)
    dkim: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The DKIM keys' public side by slot ("active" signs, "next" waits for its DNS record):
    domain, selector, algorithm, public key (app/dkim/service.py)."""
    dkim_keys: Mapped[str | None] = mapped_column(Text)
    """The DKIM private keys by slot, encrypted as one Fernet token."""
    health: Mapped[str] = mapped_column(String(10), default="unknown")
    health_error: Mapped[str | None] = mapped_column(Text)
    health_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When an admin last changed the profile (not its health): live transports are rebuilt then."""


class MailRouting(Base):
    """Where mail goes when a message names no server (one row).

    `profile_id` is the default profile; when it is null, `builtin` says whether mail goes through
    the built-in file server (a new install, or Sisense's `enable: false`) or nowhere (the admin
    deleted the default profile: sending then fails with a clear error). One row makes "exactly one
    default" structural, and switching it is a single-row update.
    """

    __tablename__ = "mail_routing"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, default=1)
    profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("server_profiles.id", ondelete="SET NULL")
    )
    builtin: Mapped[bool] = mapped_column(default=True)
