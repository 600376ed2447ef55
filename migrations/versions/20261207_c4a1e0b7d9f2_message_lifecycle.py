"""message lifecycle: sendAt, resend links, the retention purge's mark, and the `cancelled`
event type (issue 17)

Revision ID: c4a1e0b7d9f2
Revises: 9d4c2a7e6b15
Create Date: 2026-12-07 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import app.db


revision: str = "c4a1e0b7d9f2"
down_revision: str | None = "9d4c2a7e6b15"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TYPES = (
    "queued", "sent", "rejected", "failed", "bounced", "deferred", "delivered", "autoresponded",
    "opened", "clicked", "complained", "unsubscribed", "suppressed", "unknown",
)  # fmt: skip
"""The event types before this revision; it adds `cancelled` before `unknown`."""
WITH_CANCELLED = (*TYPES[:-1], "cancelled", TYPES[-1])
BODY_KEPT = sa.text("body_purged_at IS NULL")


def _types(types: tuple[str, ...]) -> str:
    return f"type IN ({', '.join(repr(t) for t in types)})"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_at", app.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resent_from", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("resent_as", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("body_purged_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_messages_body_kept",
            ["created_at"],
            unique=False,
            sqlite_where=BODY_KEPT,
            postgresql_where=BODY_KEPT,
        )
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_delivery_events_type"), type_="check")
        batch_op.create_check_constraint(op.f("ck_delivery_events_type"), _types(WITH_CANCELLED))


def downgrade() -> None:
    op.execute("DELETE FROM delivery_events WHERE type = 'cancelled'")
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_delivery_events_type"), type_="check")
        batch_op.create_check_constraint(op.f("ck_delivery_events_type"), _types(TYPES))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_body_kept")
        batch_op.drop_column("body_purged_at")
        batch_op.drop_column("resent_as")
        batch_op.drop_column("resent_from")
        batch_op.drop_column("send_at")
