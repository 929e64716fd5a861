"""broker_meta.broker_id: the id that tags this fleet's identities on the targets, kept across a
rotation of the token key (it was the token key's id, and stays the first one recorded)

Revision ID: 0016_broker_id
Revises: 0015_audit_stream
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0016_broker_id"
down_revision: str | Sequence[str] | None = "0015_audit_stream"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("broker_meta") as batch:
        batch.add_column(sa.Column("broker_id", sa.String(64), nullable=True))
    op.execute("UPDATE broker_meta SET broker_id = token_key_id")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("broker_meta") as batch:
        batch.drop_column("broker_id")
