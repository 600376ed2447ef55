from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow

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
