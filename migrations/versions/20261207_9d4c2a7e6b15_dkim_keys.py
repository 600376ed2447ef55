"""servers: DKIM keys per profile (the public side in clear, the private keys encrypted) (issue 17)

Revision ID: 9d4c2a7e6b15
Revises: 74e1c62c25d7
Create Date: 2026-12-07 02:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "9d4c2a7e6b15"
down_revision: str | None = "74e1c62c25d7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dkim", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("dkim_keys", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.drop_column("dkim_keys")
        batch_op.drop_column("dkim")
