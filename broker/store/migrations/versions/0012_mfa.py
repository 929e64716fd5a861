"""mfa: when a sign-in last presented a second factor (sessions, device logins), and device
logins that ask for one (``access login --mfa``)

Revision ID: 0012_mfa
Revises: 0011_web_sessions
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012_mfa"
down_revision: str | Sequence[str] | None = "0011_web_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("mfa_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("device_codes") as batch:
        batch.add_column(sa.Column("mfa_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("mfa_required", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("device_codes") as batch:
        batch.drop_column("mfa_required")
        batch.drop_column("mfa_at")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("mfa_at")
