"""repo record key and source

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 02:40:00

A served repo remembers the record key of its `sh.tangled.repo` record (a TID): Tangled names a repo
by the at-uri `at://<owner DID>/sh.tangled.repo/<rkey>`, not by its name. `source` says how the repo
came to be served: `cli` (the operator's registry) or `jetstream` (Tangled's records).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("repo", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rkey", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("source", sa.String(length=16), server_default="cli", nullable=False))
        batch_op.create_index(batch_op.f("ix_repo_did_rkey"), ["did", "rkey"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("repo", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_repo_did_rkey"))
        batch_op.drop_column("source")
        batch_op.drop_column("rkey")
