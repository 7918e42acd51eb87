"""repo_turn: when each repo last had a run claimed, for fair claiming across repos

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "repo_turn",
        sa.Column("knot", sa.String(length=300), nullable=False),
        sa.Column("repo_did", sa.String(length=2048), nullable=False),
        sa.Column("repo_name", sa.String(length=300), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("knot", "repo_did", "repo_name", name=op.f("pk_repo_turn")),
    )


def downgrade() -> None:
    op.drop_table("repo_turn")
