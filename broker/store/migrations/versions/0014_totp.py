"""totp: a user's TOTP secret (sealed), when its enrolment was confirmed, and the last time
step a code was accepted for (replay protection, RFC 6238 section 5.2)

Revision ID: 0014_totp
Revises: 0013_upstream_oidc
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014_totp"
# TEMPORARY until the upstream branch (0013_upstream_oidc) is merged: then "0013_upstream_oidc".
down_revision: str | Sequence[str] | None = "0013_upstream_oidc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("principals") as batch:
        batch.add_column(sa.Column("totp_secret", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("totp_confirmed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("principals") as batch:
        batch.drop_column("totp_last_step")
        batch.drop_column("totp_confirmed_at")
        batch.drop_column("totp_secret")
