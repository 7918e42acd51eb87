"""Pipelines, their workflow runs, the append-only status events and the stored log lines."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database import Base, utcnow
from app.runs.tid import new_tid

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Status(enum.StrEnum):
    """The `sh.tangled.pipeline.status` values."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Status.SUCCESS, Status.FAILED, Status.TIMEOUT, Status.CANCELLED})

_status_type = Enum(
    Status, name="run_status", native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
)


class Pipeline(Base):
    """One trigger (manual or a knot event): unique per (knot, rkey)."""

    __tablename__ = "pipeline"
    __table_args__ = (
        UniqueConstraint("knot", "rkey"),
        Index("ix_pipeline_tid", "tid", unique=True),
        # (repo, id): a repo's pipelines newest first: Tangled's queryPipelines pages through them,
        # and the retention sweep keeps the newest (SPINDLE_RETENTION_KEEP_PIPELINES).
        Index("ix_pipeline_repo_did_id", "repo_did", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The id Tangled's CI API (sh.tangled.ci.*) knows the pipeline by: a TID, unique on this
    # spindle, where (knot, rkey) is only unique per knot and an rkey of our trigger may be any key.
    # NULL only for rows written before migration 0004 by a process that did not know the column.
    tid: Mapped[str | None] = mapped_column(String(16), default=new_tid)
    knot: Mapped[str] = mapped_column(String(300))
    rkey: Mapped[str] = mapped_column(String(512))
    repo_did: Mapped[str] = mapped_column(String(2048))
    repo_name: Mapped[str] = mapped_column(String(300))
    sha: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(2048))
    # manual | push | pull_request: the Tangled trigger kinds.
    trigger_kind: Mapped[str] = mapped_column(String(32), default="manual")
    # What the trigger carried (inputs, push/PR metadata), for the run's github context.
    trigger: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # A digest of the request that created it: a retry with the same digest gets the stored answer.
    request_digest: Mapped[str] = mapped_column(String(64))
    # Indexed: the retention sweep looks for pipelines older than its cutoff.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    workflow_runs: Mapped[list[WorkflowRun]] = relationship(
        back_populates="pipeline", order_by="WorkflowRun.id", lazy="selectin"
    )

    @property
    def pipeline_uri(self) -> str:
        return pipeline_uri(self.knot, self.rkey)


def pipeline_uri(knot: str, rkey: str) -> str:
    """The at:// URI Tangled names a pipeline by: the knot as a did:web, the rkey."""
    return f"at://did:web:{knot.replace(':', '%3A')}/sh.tangled.pipeline/{rkey}"


class WorkflowRun(Base):
    """One workflow file of a pipeline, run once."""

    __tablename__ = "workflow_run"
    __table_args__ = (UniqueConstraint("pipeline_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Looked up through the unique (pipeline_id, name) index: no index of its own to maintain.
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipeline.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))  # the file's stem
    path: Mapped[str] = mapped_column(String(1024))  # .github/workflows/<file>
    source: Mapped[str] = mapped_column(Text)  # the YAML text at the commit
    inputs: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # resolved, defaults filled
    status: Mapped[Status] = mapped_column(_status_type, default=Status.PENDING, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    # Which process runs it, and when that process last said it was alive.
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # Bytes of its stored log lines (as SPINDLE_RUN_LOG_MB counts them), kept by the log sink in
    # the transaction that stores them: the retention size cap sums this, not the log table.
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When the retention sweep removed its log lines (the run and its status stay).
    logs_pruned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    pipeline: Mapped[Pipeline] = relationship(back_populates="workflow_runs", lazy="joined")


class StatusEvent(Base):
    """An append-only record of each transition; its id is the /events cursor."""

    __tablename__ = "status_event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_run_id: Mapped[int] = mapped_column(
        ForeignKey("workflow_run.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[Status] = mapped_column(_status_type)
    error: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LogLine(Base):
    """One Tangled-compatible log line of a workflow run, in order of id."""

    __tablename__ = "log_line"
    # (run, id): watchers page through one run's lines in id order without sorting them all.
    __table_args__ = (Index("ix_log_line_workflow_run_id", "workflow_run_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_run_id: Mapped[int] = mapped_column(ForeignKey("workflow_run.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # data | control
    content: Mapped[str] = mapped_column(Text)
    stream: Mapped[str | None] = mapped_column(String(16))  # stdout | stderr
    step_id: Mapped[int | None] = mapped_column(Integer)
    step_status: Mapped[str | None] = mapped_column(String(16))  # start | end
    step_command: Mapped[str | None] = mapped_column(Text)
    # system | user: whether the line belongs to a step the spindle added or one the workflow wrote
    # (Tangled's StepKind); NULL on lines stored before migration 0004 (see streams.service).
    step_kind: Mapped[str | None] = mapped_column(String(8))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
