"""bounces: messages.message_id indexed (a report without a VERP token is matched by it), and
bounce_cursors (where a Microsoft Graph bounce poll got to) (issue 14)

Revision ID: 493f0de96503
Revises: 0e323d11cc79
Create Date: 2026-12-06 23:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import app.db


revision: str = "493f0de96503"
down_revision: str | None = "0e323d11cc79"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bounce_cursors",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_bounce_cursors")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_message_id"), ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_message_id"))
    op.drop_table("bounce_cursors")
