"""locks: the kill switch on a user, a service or a grant (access-broker lock)

Revision ID: 0009_locks
Revises: 0008_policy_versions
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009_locks"
down_revision: str | Sequence[str] | None = "0008_policy_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "locks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lifted_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_locks")),
    )
    op.create_index("ix_locks_kind_value", "locks", ["kind", "value"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_locks_kind_value", table_name="locks")
    op.drop_table("locks")
