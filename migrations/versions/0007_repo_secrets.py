"""repo secrets

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-05 04:00:00

`repo_secret`: the sealed value of each `secrets.<key>` of a served repo (AES-256-GCM, see
app/secrets/crypto.py), which key sealed it, who added it and when. Removing a repo removes its
secrets.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "repo_secret",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=50), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=2048), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id"], ["repo.id"], name=op.f("fk_repo_secret_repo_id_repo"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repo_secret")),
        sa.UniqueConstraint("repo_id", "key", name=op.f("uq_repo_secret_repo_id_key")),
    )


def downgrade() -> None:
    op.drop_table("repo_secret")
