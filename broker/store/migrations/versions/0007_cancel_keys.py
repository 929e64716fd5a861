"""cancel_keys: the PostgreSQL cancel keys the broker issued, for a cancel that reaches another replica

Revision ID: 0007_cancel_keys
Revises: 0006_identity_attempts
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007_cancel_keys"
down_revision: str | Sequence[str] | None = "0006_identity_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "cancel_keys",
        sa.Column("pid", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("secret_mac", sa.LargeBinary(), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("target_key", sa.LargeBinary(), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pid", name=op.f("pk_cancel_keys")),
    )
    with op.batch_alter_table("cancel_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cancel_keys_instance_id"), ["instance_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("cancel_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cancel_keys_instance_id"))
    op.drop_table("cancel_keys")
