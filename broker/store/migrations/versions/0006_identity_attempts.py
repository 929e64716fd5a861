"""per-grant identities: when the latest attempt to make one began (a crashed issue is taken over)

Revision ID: 0006_identity_attempts
Revises: 0005_identities
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006_identity_attempts"
down_revision: str | Sequence[str] | None = "0005_identities"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("attempt_at")
