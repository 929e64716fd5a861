"""audit_stream: an index on audit_log.at, so that a search bounded by time (``access audit
--since 1h``) reads the last hour's entries, not the whole ledger (benchmarks/ledger.py); and
audit_sink_cursor, how far the audit sink has delivered the ledger (``audit.sink``)

Revision ID: 0015_audit_stream
Revises: 0014_totp
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0015_audit_stream"
down_revision: str | Sequence[str] | None = "0014_totp"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_table(
        "audit_sink_cursor",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_sink_cursor")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("audit_sink_cursor")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
