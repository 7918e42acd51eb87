"""retention: per-run stored log bytes, pruned-log mark, indexes for the sweep

Revision ID: 0006
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_bytes", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("logs_pruned_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_workflow_run_finished_at"), ["finished_at"], unique=False)
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pipeline_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_pipeline_repo_did_id", ["repo_did", "id"], unique=False)
    # Logs stored before this revision: their size as the log sink counts it (UTF-8 bytes of the
    # content and the step command), so that the size cap sees them too.
    if op.get_bind().dialect.name == "postgresql":
        size = "octet_length(content) + coalesce(octet_length(step_command), 0)"
    else:
        size = "length(CAST(content AS BLOB)) + coalesce(length(CAST(step_command AS BLOB)), 0)"
    op.execute(
        f"UPDATE workflow_run SET log_bytes = (SELECT coalesce(sum({size}), 0) FROM log_line "
        "WHERE log_line.workflow_run_id = workflow_run.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.drop_index("ix_pipeline_repo_did_id")
        batch_op.drop_index(batch_op.f("ix_pipeline_created_at"))
    with op.batch_alter_table("workflow_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_run_finished_at"))
        batch_op.drop_column("logs_pruned_at")
        batch_op.drop_column("log_bytes")
