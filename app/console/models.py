"""Console sessions: server-side, so a logout or an admin's revocation ends them everywhere."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class ConsoleSession(Base):
    """One browser's login. The cookie holds a random token; the row holds only its SHA-256,
    so a copy of the database does not log anyone in."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    """Deleting the user ends its sessions."""
    password_hash: Mapped[str] = mapped_column(String(200))
    """The user's hash at login: a changed password ends the session."""
    csrf: Mapped[str] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    """Last request; the session expires IDLE_TIMEOUT after it."""
