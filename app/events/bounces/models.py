"""Where each mailbox poll that cannot mark what it read got to (Microsoft Graph with Mail.Read
only): in the database, so every replica resumes from the same place."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class BounceCursor(Base):
    __tablename__ = "bounce_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    """What is polled: `graph:<profile>`."""
    position: Mapped[datetime]
    """Mail received at or after this is read on the next poll (the boundary again: a report
    recorded twice is stored once)."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
