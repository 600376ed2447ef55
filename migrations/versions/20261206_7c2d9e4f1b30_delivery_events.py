"""delivery events: one vocabulary of events per recipient (issue 14)

Revision ID: 7c2d9e4f1b30
Revises: 5b1e0c7d2a90
Create Date: 2026-12-06 21:06:49.721181
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import app.db


revision: str = "7c2d9e4f1b30"
down_revision: str | None = "5b1e0c7d2a90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_pk", sa.String(length=32), nullable=True),
        sa.Column("recipient_pk", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("bounce_type", sa.String(length=12), nullable=True),
        sa.Column("occurred_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("profile", sa.String(length=50), nullable=True),
        sa.Column("provider_event_id", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("diagnostic_code", sa.String(length=1000), nullable=True),
        sa.CheckConstraint(
            "bounce_type IN ('hard', 'soft', 'undetermined')",
            name=op.f("ck_delivery_events_bounce_type"),
        ),
        sa.CheckConstraint(
            "type IN ('queued', 'sent', 'rejected', 'failed', 'bounced', 'deferred', 'delivered', 'autoresponded', 'opened', 'clicked', 'complained', 'unsubscribed', 'suppressed', 'unknown')",
            name=op.f("ck_delivery_events_type"),
        ),
        sa.ForeignKeyConstraint(
            ["message_pk"],
            ["messages.id"],
            name=op.f("fk_delivery_events_message_pk_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recipient_pk"],
            ["recipients.id"],
            name=op.f("fk_delivery_events_recipient_pk_recipients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_events")),
        sa.UniqueConstraint(
            "source", "provider_event_id", name="uq_delivery_events_provider_event"
        ),
    )
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_events_message_type", ["message_pk", "type"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_delivery_events_recipient_pk"), ["recipient_pk"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_events_recipient_pk"))
        batch_op.drop_index("ix_delivery_events_message_type")

    op.drop_table("delivery_events")
