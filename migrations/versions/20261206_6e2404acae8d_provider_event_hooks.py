"""provider event hooks: the replay guard's nonces, attempts.provider_id indexed (issue 14)

Revision ID: 6e2404acae8d
Revises: 23de871b02f1
Create Date: 2026-12-06 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import app.db


revision: str = "6e2404acae8d"
down_revision: str | None = "23de871b02f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hook_nonces",
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "digest", name=op.f("pk_hook_nonces")),
    )
    with op.batch_alter_table("hook_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hook_nonces_expires_at"), ["expires_at"], unique=False)
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attempts_provider_id"), ["provider_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_provider_id"))
    with op.batch_alter_table("hook_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hook_nonces_expires_at"))
    op.drop_table("hook_nonces")
