"""jetstream: spindle members, collaborator grants, the Jetstream cursor, a repo's own DID

Revision ID: 0003
Revises: 0006
Create Date: 2026-12-05 02:50:00

Tangled's records read from Jetstream: `spindle_member` (the owner's sh.tangled.spindle.member
records naming this spindle), `collaborator_grant` (sh.tangled.repo.collaborator records, kept by
(did, rkey) so that a deletion finds what it removed), `jetstream_cursor` (time_us of the last
handled event). `repo.repo_did` is the repo's own DID, by which current knots name it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jetstream_cursor",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_jetstream_cursor")),
    )
    op.create_table(
        "spindle_member",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("did", sa.String(length=2048), nullable=False),
        sa.Column("rkey", sa.String(length=512), nullable=False),
        sa.Column("subject", sa.String(length=2048), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spindle_member")),
        sa.UniqueConstraint("did", "rkey", name=op.f("uq_spindle_member_did_rkey")),
    )
    op.create_index("ix_spindle_member_subject", "spindle_member", ["subject"], unique=False)
    op.create_table(
        "collaborator_grant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("did", sa.String(length=2048), nullable=False),
        sa.Column("rkey", sa.String(length=512), nullable=False),
        sa.Column("subject", sa.String(length=2048), nullable=False),
        sa.Column("repo_uri", sa.String(length=3000), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collaborator_grant")),
        sa.UniqueConstraint("did", "rkey", name=op.f("uq_collaborator_grant_did_rkey")),
    )
    op.create_index("ix_collaborator_grant_repo_uri", "collaborator_grant", ["repo_uri"], unique=False)
    with op.batch_alter_table("repo", schema=None) as batch_op:
        batch_op.add_column(sa.Column("repo_did", sa.String(length=2048), nullable=True))
        batch_op.create_index(batch_op.f("ix_repo_repo_did"), ["repo_did"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("repo", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_repo_repo_did"))
        batch_op.drop_column("repo_did")
    op.drop_index("ix_collaborator_grant_repo_uri", table_name="collaborator_grant")
    op.drop_table("collaborator_grant")
    op.drop_index("ix_spindle_member_subject", table_name="spindle_member")
    op.drop_table("spindle_member")
    op.drop_table("jetstream_cursor")
