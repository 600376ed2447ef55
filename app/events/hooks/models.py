"""The replay guard's table: what a provider signed that must be accepted once."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, table_of


class HookNonce(Base):
    """A Mailgun token or a SendGrid (timestamp, signature) already accepted. In the database, so
    that a replay to another replica is refused too; kept until its timestamp would be stale."""

    __tablename__ = "hook_nonces"

    source: Mapped[str] = mapped_column(String(20), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 (hex) of the nonce: a fixed width whatever the provider signs."""
    expires_at: Mapped[datetime] = mapped_column(index=True)


NONCES = table_of(HookNonce)
