"""The outbox: messages, their recipients, and every attempt to deliver them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import ID, Base, new_id, table_of, utcnow

MESSAGE_STATUSES = (
    "queued", "sending", "sent", "partially_sent", "failed", "suppressed", "cancelled",
)  # fmt: skip
"""suppressed: every recipient is on the suppression list, nothing was sent; cancelled: a user
cancelled it before it was sent (app/messages/lifecycle.py)."""
FINISHED = ("sent", "partially_sent", "failed", "suppressed", "cancelled")
"""The statuses no delivery attempt changes any more (a late event may still arrive)."""
BODY_KEPT = text("body_purged_at IS NULL")
OPTIONAL_SEARCH = ("server", "template", "resource")
"""Columns the records search filters on that many messages leave null (no template, no
resource; no profile when the built-in server sends): indexed only where set. A message without a
template or resource is written to two indexes fewer on its INSERT, and on PostgreSQL on each of
its two non-HOT UPDATEs too (claim and finish); `column = value` still finds the index, on SQLite
as on PostgreSQL."""


class Message(Base):
    """One accepted message: what to send (`payload`), where it stands, and who asked for it.

    The outbox columns: a message is due when `status` is queued and `next_attempt_at` has come;
    a claim sets `sending`, bumps `attempts` and sets `lease_until`; finishing is fenced on
    `attempts`, so a worker whose lease expired cannot overwrite the next one's result.
    """

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_due", "status", "next_attempt_at"),
        Index("ix_messages_created", "created_at", "id"),
        Index(
            "ix_messages_body_kept",
            "created_at",
            sqlite_where=BODY_KEPT,
            postgresql_where=BODY_KEPT,
        ),
        *(
            Index(f"ix_messages_{column}", column, sqlite_where=where, postgresql_where=where)
            for column in OPTIONAL_SEARCH
            for where in (text(f"{column} IS NOT NULL"),)
        ),
        UniqueConstraint("created_by", "idempotency_key", name="uq_messages_idempotency"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(String(255), index=True)
    """The RFC 5322 Message-ID, fixed at enqueue and kept on every attempt; indexed for bounce
    reports that name the mail only by it."""
    status: Mapped[str] = mapped_column(String(20), default="queued")
    sender: Mapped[str] = mapped_column(String(320), index=True)
    subject: Mapped[str] = mapped_column(String(1000), default="")
    server: Mapped[str | None] = mapped_column(String(50))
    """The profile it goes through, resolved at intake (the one it named, else the default);
    null: the built-in server."""
    template: Mapped[str | None] = mapped_column(String(50))
    theme: Mapped[str | None] = mapped_column(String(50))
    resource: Mapped[str | None] = mapped_column(String(500))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(50))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    send_at: Mapped[datetime | None]
    """When its sender asked it to go (`sendAt`): its first `next_attempt_at`. Null: at once."""
    resent_from: Mapped[str | None] = mapped_column(ID)
    """The failed or bounced message this one sends again. No foreign key (nor in `resent_as`):
    a link outlives the purge of the message it names, and a purge need not look for it."""
    resent_as: Mapped[str | None] = mapped_column(ID)
    """The message that sends this one again; set once (a second resend is a 409)."""
    body_purged_at: Mapped[datetime | None]
    """When the retention purge removed its bodies, attachments and template data (the record
    stays); indexed, by ix_messages_body_kept, only while it is null."""

    @property
    def starts_at(self) -> datetime:
        """When its delivery was asked to start: its `sendAt`, else when it was accepted. Its age
        (POSTROOM_MAX_MESSAGE_AGE, the retention periods) counts from here."""
        return self.send_at or self.created_at

    recipients: Mapped[list[Recipient]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Recipient.id"
    )
    attempt_log: Mapped[list[Attempt]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Attempt.id"
    )


class Recipient(Base):
    """One envelope recipient and its own outcome."""

    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_pk: Mapped[str] = mapped_column(
        ID, ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320), index=True)
    kind: Mapped[str] = mapped_column(String(5))
    """to, cc, bcc, or group (a member of a group that gets the same content privately)."""
    status: Mapped[str] = mapped_column(String(10), default="pending")
    """pending, then a transport status: sent, queued, rejected, invalid, failed, deferred; or
    suppressed (on the suppression list, not sent), or cancelled (its message was)."""
    code: Mapped[int | None]
    response: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """Per-recipient template data: such a recipient gets a message of its own. Without it, SQL
    NULL (not JSON null: no json.dumps per recipient row)."""
    updated_at: Mapped[datetime | None]

    message: Mapped[Message] = relationship(back_populates="recipients")


class Attempt(Base):
    """One SMTP transaction or API call for a message (a group may need several per attempt)."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_pk: Mapped[str] = mapped_column(
        ID, ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int]
    server: Mapped[str] = mapped_column(String(50))
    started_at: Mapped[datetime]
    duration_ms: Mapped[float]
    outcome: Mapped[str] = mapped_column(String(10))
    """sent, partial, deferred or failed."""
    recipients: Mapped[int]
    tls_version: Mapped[str | None] = mapped_column(String(20))
    reply_code: Mapped[int | None]
    reply: Mapped[str | None] = mapped_column(Text)
    provider_id: Mapped[str | None] = mapped_column(String(500), index=True)
    """Indexed: a provider's delivery event names the message by it."""
    error_code: Mapped[str | None] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    ambiguous: Mapped[bool] = mapped_column(default=False)

    message: Mapped[Message] = relationship(back_populates="attempt_log")


MESSAGES, RECIPIENTS, ATTEMPTS = table_of(Message), table_of(Recipient), table_of(Attempt)
"""The tables themselves, for Core statements over many rows."""


class Heartbeat(Base):
    """One running loop (a dispatcher in `postroom serve` or a `postroom worker`): it writes
    `beat_at` every few seconds, so every replica can tell which loops are alive."""

    __tablename__ = "heartbeats"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    """host:pid:random, fixed for the life of the loop."""
    loop: Mapped[str] = mapped_column(String(30))
    """What runs: `dispatcher` (in the API process) or `worker`."""
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)
    error: Mapped[str | None] = mapped_column(Text)
    """The last exception the loop survived, with when it happened, until a pass succeeds."""


class QuotaBucket(Base):
    """A profile's sending quota as every worker sees it (app/delivery/quota.py): what its rate
    limit's windows have counted, and until when its provider asked it to slow down. Locked by
    the claim that takes from it, so 1 or 8 workers send at the same rate."""

    __tablename__ = "quota_buckets"

    profile: Mapped[str] = mapped_column(
        String(50), ForeignKey("server_profiles.name", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """The windows' counts and the bookings (app/delivery/buckets.py); null until first used."""
    throttled_until: Mapped[datetime | None]
    """The provider answered "too many" (HTTP 429, SMTP 421 4.7.x): nothing goes before then."""
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    """Messages the quota held back (their due time moved), ever: a counter for /metrics."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


QUOTA_BUCKETS = table_of(QuotaBucket)
