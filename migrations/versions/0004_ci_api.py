"""pipeline TIDs and log line step kinds (Tangled's CI API)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 02:50:00

`pipeline.tid`: the id `sh.tangled.ci.*` knows a pipeline by (a TID, unique on the spindle).
Existing pipelines get one made from their creation time and row id, so ids are stable and
ordered like the pipelines (queryPipelines reads `(repo_did, id)`, indexed by 0006).
`log_line.step_kind`: `system` or `user` (Tangled's StepKind); lines stored before stay NULL and
are read as described in app/streams/service.py.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def _tid(micros: int, clock_id: int) -> str:
    # A copy of app.runs.tid.encode: a migration must not change when the app's code does.
    value = ((micros & ((1 << 53) - 1)) << 10) | (clock_id & 1023)
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in range(12, -1, -1))


def _micros(value: datetime | str) -> int:
    if isinstance(value, str):  # SQLite hands back text
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


def upgrade() -> None:
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tid", sa.String(length=16), nullable=True))
    with op.batch_alter_table("log_line", schema=None) as batch_op:
        batch_op.add_column(sa.Column("step_kind", sa.String(length=8), nullable=True))

    conn = op.get_bind()
    pipeline = sa.table(
        "pipeline", sa.column("id", sa.BigInteger()), sa.column("created_at"), sa.column("tid")
    )
    rows = conn.execute(sa.select(pipeline.c.id, pipeline.c.created_at).order_by(pipeline.c.id)).all()
    taken: set[str] = set()
    for row_id, created_at in rows:
        # Pipelines of one batch share a creation time; the row id tells them apart.
        micros, clock = _micros(created_at), row_id % 1024
        tid = _tid(micros, clock)
        while tid in taken:
            micros += 1
            tid = _tid(micros, clock)
        taken.add(tid)
        conn.execute(sa.update(pipeline).where(pipeline.c.id == row_id).values(tid=tid))

    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.create_index("ix_pipeline_tid", ["tid"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.drop_index("ix_pipeline_tid")
        batch_op.drop_column("tid")
    with op.batch_alter_table("log_line", schema=None) as batch_op:
        batch_op.drop_column("step_kind")
