"""broker_meta: the issuer and key fingerprints every replica on this database must share

Revision ID: 0003_broker_meta
Revises: 0002
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003_broker_meta"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "broker_meta",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("issuer", sa.String(length=2048), nullable=True),
        sa.Column("token_key_id", sa.String(length=64), nullable=False),
        sa.Column("audit_key_id", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_meta")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("broker_meta")
