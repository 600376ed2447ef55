from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import ID, Base, new_id, utcnow

ROLES = ("admin", "sender")


class User(Base):
    """An API user; `role` is admin (everything) or sender (send and read its own messages)."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('admin', 'sender')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    role: Mapped[str] = mapped_column(String(10))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    allowed_from: Mapped[list[Any] | None] = mapped_column(JSON)
    """A sender's From addresses and domains ("a@example.com", "example.com"); null: the
    branding sender and the senders of the profiles it may use."""
    allowed_servers: Mapped[list[Any] | None] = mapped_column(JSON)
    """The profile names a sender may send through; null: the default profile only."""


class ApiToken(Base):
    """A bearer token of a user: it acts as the user (role and sending bounds as they are now).
    Only the SHA-256 of the token is kept: a copy of the database authenticates no one. A
    revoked token keeps its row (the list shows when it was revoked); deleting the user
    deletes its tokens."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    """Written at most once a minute per process, after the request it records."""
    revoked_at: Mapped[datetime | None]


class LoginFailures(Base):
    """Consecutive failed logins for one key (a user name, or a user name from one client), shared
    by every process: the account lockout holds across replicas."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int]
    locked_until: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrustedLogin(Base):
    """A client that logged in with a user's password before (an HMAC of address, name and
    password, keyed so it is worthless without the database): it still gets in while that
    name is locked."""

    __tablename__ = "trusted_logins"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
