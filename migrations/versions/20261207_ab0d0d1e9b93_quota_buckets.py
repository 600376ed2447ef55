"""quotas: a rate limit per server profile, and the bucket rows every worker's claim takes from
(and a provider's throttle is written to) (issue 17)

Revision ID: ab0d0d1e9b93
Revises: c4a1e0b7d9f2
Create Date: 2026-12-07 02:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import app.db


revision: str = "ab0d0d1e9b93"
down_revision: str | None = "c4a1e0b7d9f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_buckets",
        sa.Column("profile", sa.String(length=50), nullable=False),
        sa.Column("state", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("throttled_until", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile"],
            ["server_profiles.name"],
            name=op.f("fk_quota_buckets_profile_server_profiles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("profile", name=op.f("pk_quota_buckets")),
    )
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_limit", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.drop_column("rate_limit")
    op.drop_table("quota_buckets")
