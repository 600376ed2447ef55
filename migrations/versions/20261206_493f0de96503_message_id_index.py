"""messages.message_id indexed: a bounce report without a VERP token is matched by it (issue 14)

Revision ID: 493f0de96503
Revises: 7c2d9e4f1b30
Create Date: 2026-12-06 23:00:00.000000
"""

from collections.abc import Sequence

from alembic import op


revision: str = "493f0de96503"
down_revision: str | None = "7c2d9e4f1b30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_message_id"), ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_message_id"))
