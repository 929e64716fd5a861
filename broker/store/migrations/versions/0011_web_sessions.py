"""web_sessions: the approvals inbox's browser sign-ins (a hashed cookie token per session)

Revision ID: 0011_web_sessions
Revises: 0010_approvals
Create Date: 2026-12-02

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011_web_sessions"
down_revision: str | Sequence[str] | None = "0010_approvals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_web_sessions_session_id_sessions")
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("session_id", name=op.f("uq_web_sessions_session_id")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("web_sessions")
