"""partial indexes for the records search's optional columns (server, template, resource): a
message that leaves one null is not written to its index, on its insert and, on PostgreSQL, on
each non-HOT update (issue 16, point 5)

Revision ID: a646ba029620
Revises: ab0d0d1e9b93
Create Date: 2026-12-07 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a646ba029620"
down_revision: str | None = "ab0d0d1e9b93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("server", "template", "resource")


def upgrade() -> None:
    for column in COLUMNS:
        where = sa.text(f"{column} IS NOT NULL")
        op.drop_index(f"ix_messages_{column}", table_name="messages")
        op.create_index(
            f"ix_messages_{column}",
            "messages",
            [column],
            unique=False,
            sqlite_where=where,
            postgresql_where=where,
        )


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_messages_{column}", table_name="messages")
        op.create_index(f"ix_messages_{column}", "messages", [column], unique=False)
