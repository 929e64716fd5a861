"""upstream OIDC: principals linked by (issuer, subject), upstream sessions, sign-ins under way

Revision ID: 0013_upstream_oidc
Revises: 0012_mfa
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013_upstream_oidc"
down_revision: str | Sequence[str] | None = "0012_mfa"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("issuer", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("subject", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint("uq_principals_issuer_subject", ["issuer", "subject"])
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_provider", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("upstream_refresh", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("device_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_provider", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("upstream_refresh", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("session_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "oidc_logins",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("browser_hash", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("code_verifier", sa.LargeBinary(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_logins")),
        sa.UniqueConstraint("state_hash", name=op.f("uq_oidc_logins_state_hash")),
    )
    with op.batch_alter_table("oidc_logins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_oidc_logins_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("oidc_logins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oidc_logins_expires_at"))
    op.drop_table("oidc_logins")
    with op.batch_alter_table("device_codes", schema=None) as batch_op:
        batch_op.drop_column("session_expires_at")
        batch_op.drop_column("upstream_refresh")
        batch_op.drop_column("upstream_provider")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("upstream_refresh")
        batch_op.drop_column("upstream_provider")
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_constraint("uq_principals_issuer_subject", type_="unique")
        batch_op.drop_column("subject")
        batch_op.drop_column("issuer")
