"""approvals: reviewers' votes, the asked TTL and approval time of grants, break-glass, SA owners

Revision ID: 0009_approvals
Revises: 0008_policy_versions
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009_approvals"
down_revision: str | Sequence[str] | None = "0008_policy_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ttl_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("grant_id", sa.String(length=40), nullable=False),
        sa.Column("reviewer_id", sa.String(length=36), nullable=False),
        sa.Column("reviewer", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["grant_id"], ["grants.id"], name=op.f("fk_approvals_grant_id_grants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint("grant_id", "reviewer_id", name="uq_approvals_grant_reviewer"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("approvals")
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_column("owner")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("break_glass")
        batch_op.drop_column("approved_at")
        batch_op.drop_column("ttl_seconds")
