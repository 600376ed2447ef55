"""suppressions: the suppression list, soft-bounce counts, one-click unsubscribe per profile

Revision ID: 0e323d11cc79
Revises: 2eed4bff4857
Create Date: 2026-12-06 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import app.db


revision: str = "0e323d11cc79"
down_revision: str | None = "2eed4bff4857"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("scope", sa.String(length=50), nullable=False),
        sa.Column("reason", sa.String(length=12), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.Column("message_pk", sa.String(length=32), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "reason IN ('hard_bounce', 'complaint', 'unsubscribe', 'manual')",
            name=op.f("ck_suppressions_reason"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sa.UniqueConstraint("address", "scope", name="uq_suppressions_address_scope"),
    )
    op.create_table(
        "soft_bounces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("occurred_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_soft_bounces")),
    )
    with op.batch_alter_table("soft_bounces", schema=None) as batch_op:
        batch_op.create_index(
            "ix_soft_bounces_address_at", ["address", "occurred_at"], unique=False
        )
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "list_unsubscribe", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.drop_column("list_unsubscribe")
    with op.batch_alter_table("soft_bounces", schema=None) as batch_op:
        batch_op.drop_index("ix_soft_bounces_address_at")
    op.drop_table("soft_bounces")
    op.drop_table("suppressions")
