"""Retention: what the database keeps of finished runs, deleted in small batches in the background.

    sweeper = RetentionSweeper(settings=, engine=, metrics=)
    await sweeper.start()          # a sweep now, then every SPINDLE_RETENTION_INTERVAL_SECONDS
    report = await sweeper.sweep() # one sweep (tests, `spindle retention sweep`)
    await sweeper.stop()           # finishes the statement in flight, then returns

Three rules, each off when its setting is 0 (docs/operations.md):
- runs by age: a pipeline created more than SPINDLE_RETENTION_RUNS_DAYS ago whose runs have all
  finished goes, with its runs, their status events and log lines;
- logs by age: a run finished more than SPINDLE_RETENTION_LOGS_DAYS ago loses its log lines; the
  run, its status and its events stay, `logs_pruned_at` says when;
- logs by size: while the stored log bytes (the sum of `workflow_run.log_bytes`) exceed
  SPINDLE_RETENTION_LOG_MB, the oldest finished runs lose their log lines first.
The age rules never touch the newest SPINDLE_RETENTION_KEEP_PIPELINES pipelines of a repo (what
Tangled's `sh.tangled.ci.queryPipelines` lists first: its default page is 50), so a quiet repo's
Pipelines tab is never emptied; the size cap is a hard cap and may take their logs too. A pending
or running run, and anything it needs, is never deleted: only finished runs are selected, and a
finished run never runs again.

Batches: every statement deletes or updates at most SPINDLE_RETENTION_BATCH_ROWS rows, in a
transaction of its own, followed by a pause of SPINDLE_RETENTION_PAUSE_MS, so that triggers and
log writes wait for the write lock (SQLite) or row locks (PostgreSQL) for one small batch at most.
Children go before parents (log lines, status events, runs, then the pipeline), so the foreign
keys' ON DELETE CASCADE never deletes an unbounded number of rows in one statement; a sweep cut
short (a crash, a stop) leaves nothing half-visible that the next sweep does not finish. On
SQLite each batch is a few hundred kB of WAL, which the connections' automatic checkpoints copy
back between batches; past the pipeline writer's WAL bound the sweep checkpoints before going on.

Several processes sharing a database: on PostgreSQL a sweep holds a session advisory lock, so one
process sweeps at a time and the others skip that round; and every batch selects its rows with
FOR UPDATE SKIP LOCKED in id order, so even two sweeps at once neither wait on nor deadlock with
each other. On SQLite the write lock serializes them; deleting rows already gone deletes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, delete, exists, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.background import BackgroundLoop
from app.config import Settings
from app.database import utcnow
from app.metrics import Metrics
from app.runs.models import FINISHED, LogLine, Pipeline, Status, StatusEvent, WorkflowRun
from app.runs.writer import WAL_RESTART_BYTES

log = logging.getLogger(__name__)

# Any constant both sides agree on: the key of PostgreSQL's advisory lock for the sweep.
ADVISORY_LOCK_KEY = 0x5350_494E_444C_4552 & 0x7FFF_FFFF_FFFF_FFFF  # "SPINDLER"
# Pipelines (and runs) handled per round: each round then deletes their rows in batches.
PARENTS_PER_ROUND = 50

_LOG = cast(Table, LogLine.__table__)
_EVENT = cast(Table, StatusEvent.__table__)
_RUN = cast(Table, WorkflowRun.__table__)
_PIPELINE = cast(Table, Pipeline.__table__)
_FINISHED = sorted(status.value for status in FINISHED)
_UNFINISHED = [Status.PENDING.value, Status.RUNNING.value]


@dataclass
class SweepReport:
    """What one sweep did: rows deleted per table, logs pruned, and the largest single statement."""

    deleted: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("log_line", "status_event", "workflow_run", "pipeline"), 0)
    )
    logs_pruned: int = 0  # runs whose log lines were removed (the runs stay)
    statements: int = 0
    largest_statement: int = 0  # rows
    skipped: bool = False  # another process held the sweep lock
    seconds: float = 0.0


class RetentionSweeper:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.batch_rows = settings.retention_batch_rows
        self.pause = settings.retention_pause_ms / 1000
        self._loop = BackgroundLoop()
        self._sqlite_path: str | None = None
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self._sqlite_path = engine.url.database

    @property
    def enabled(self) -> bool:
        s = self.settings
        return bool(s.retention_runs_days or s.retention_logs_days or s.retention_log_mb)

    async def start(self) -> None:
        if self.enabled:
            self._loop.start(self._run(), name="retention")

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while not self._loop.stopping:
            try:
                report = await self.sweep()
                if report.logs_pruned or any(report.deleted.values()):
                    log.info(
                        "retention: deleted %s; pruned the logs of %d runs in %.1f s",
                        ", ".join(f"{n} {table}" for table, n in report.deleted.items() if n),
                        report.logs_pruned,
                        report.seconds,
                    )
            except Exception:
                # A database hiccup must not end retention; the next round tries again.
                log.exception("retention sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loop.event.wait(), self.settings.retention_interval_seconds)
            self._loop.event.clear()

    # -- one sweep ------------------------------------------------------------------------------

    async def sweep(self, *, now: datetime | None = None) -> SweepReport:
        """Apply every rule once, in batches; returns what was done."""
        started = time.monotonic()
        now = now or utcnow()
        report = SweepReport()
        async with self._sweep_lock() as held:
            if not held:
                report.skipped = True
                return report
            s = self.settings
            if s.retention_runs_days:
                await self._delete_old_pipelines(report, now - timedelta(days=s.retention_runs_days))
            if s.retention_logs_days and not self._loop.stopping:
                await self._prune_old_logs(report, now, now - timedelta(days=s.retention_logs_days))
            if s.retention_log_mb and not self._loop.stopping:
                await self._cap_log_bytes(report, now, s.retention_log_mb * 1024 * 1024)
        report.seconds = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.retention_swept(report.deleted, report.seconds)
        return report

    @contextlib.asynccontextmanager
    async def _sweep_lock(self) -> AsyncIterator[bool]:
        """PostgreSQL: a session advisory lock, so that processes sharing the database take turns."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        async with self.engine.connect() as conn:
            held = bool(await conn.scalar(select(func.pg_try_advisory_lock(ADVISORY_LOCK_KEY))))
            await conn.commit()
            try:
                yield held
            finally:
                if held:
                    await conn.scalar(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))
                    await conn.commit()

    def _protected(self, pipeline: Any) -> ColumnElement[bool]:
        """True for a pipeline among the newest N of its repo (a correlated subquery; the
        (repo_did, id) index answers it by reading at most N index entries)."""
        keep = self.settings.retention_keep_pipelines
        if keep <= 0:
            return false()
        newer = Pipeline.__table__.alias("newer")
        nth_newer = (
            select(newer.c.id)
            .where(newer.c.repo_did == pipeline.c.repo_did, newer.c.id > pipeline.c.id)
            .order_by(newer.c.id)
            .limit(1)
            .offset(keep - 1)
            .scalar_subquery()
        )
        return nth_newer.is_(None)

    async def _delete_old_pipelines(self, report: SweepReport, cutoff: datetime) -> None:
        p = _PIPELINE
        unfinished = exists().where(_RUN.c.pipeline_id == p.c.id, _RUN.c.status.in_(_UNFINISHED))
        candidates = (
            select(p.c.id)
            .where(p.c.created_at < cutoff, ~unfinished, ~self._protected(p))
            .order_by(p.c.id)
            .limit(PARENTS_PER_ROUND)
        )
        after = 0
        while not self._loop.stopping:
            async with self.engine.connect() as conn:
                ids = list(await conn.scalars(candidates.where(p.c.id > after)))
            if not ids:
                return
            after = ids[-1]
            async with self.engine.connect() as conn:
                runs = list(
                    await conn.scalars(
                        select(_RUN.c.id).where(_RUN.c.pipeline_id.in_(ids), _RUN.c.status.in_(_FINISHED))
                    )
                )
            if runs:
                await self._delete_children(report, runs)
                await self._delete_batched(report, _RUN, _RUN.c.id.in_(runs) & _RUN.c.status.in_(_FINISHED))
            # Only a pipeline left with no run at all: a run we did not select (none should be) stays
            # with its pipeline.
            no_runs = ~exists().where(_RUN.c.pipeline_id == p.c.id)
            await self._delete_batched(report, p, p.c.id.in_(ids) & no_runs)

    async def _delete_children(self, report: SweepReport, runs: list[int]) -> None:
        await self._delete_batched(report, _LOG, _LOG.c.workflow_run_id.in_(runs))
        await self._delete_batched(report, _EVENT, _EVENT.c.workflow_run_id.in_(runs))

    async def _prune_old_logs(self, report: SweepReport, now: datetime, cutoff: datetime) -> None:
        r = _RUN
        pipeline = _PIPELINE.alias("owner")
        candidates = (
            select(r.c.id)
            .join(pipeline, pipeline.c.id == r.c.pipeline_id)
            .where(
                r.c.status.in_(_FINISHED),
                r.c.finished_at < cutoff,
                r.c.logs_pruned_at.is_(None),
                ~self._protected(pipeline),
            )
            .order_by(r.c.id)
            .limit(PARENTS_PER_ROUND)
        )
        after = 0
        while not self._loop.stopping:
            async with self.engine.connect() as conn:
                runs = list(await conn.scalars(candidates.where(r.c.id > after)))
            if not runs:
                return
            after = runs[-1]
            await self._prune_logs(report, now, runs)

    async def _cap_log_bytes(self, report: SweepReport, now: datetime, cap: int) -> None:
        r = _RUN
        while not self._loop.stopping:
            async with self.engine.connect() as conn:
                total = int(await conn.scalar(select(func.coalesce(func.sum(r.c.log_bytes), 0))) or 0)
                if total <= cap:
                    return
                rows = (
                    await conn.execute(
                        select(r.c.id, r.c.log_bytes)
                        .where(r.c.status.in_(_FINISHED), r.c.log_bytes > 0)
                        .order_by(r.c.id)
                        .limit(PARENTS_PER_ROUND)
                    )
                ).all()
            if not rows:
                return  # what is left belongs to runs still running
            runs, excess = [], total - cap
            for run_id, size in rows:
                runs.append(run_id)
                excess -= size
                if excess <= 0:
                    break
            await self._prune_logs(report, now, runs)

    async def _prune_logs(self, report: SweepReport, now: datetime, runs: list[int]) -> None:
        """Delete the runs' log lines, then mark them pruned (log_bytes 0)."""
        await self._delete_batched(report, _LOG, _LOG.c.workflow_run_id.in_(runs))
        if self._loop.stopping:
            return  # not marked: the next sweep finishes these runs
        async with self.engine.begin() as conn:
            marked = await conn.execute(
                update(_RUN)
                .where(_RUN.c.id.in_(runs), _RUN.c.status.in_(_FINISHED))
                .values(log_bytes=0, logs_pruned_at=func.coalesce(_RUN.c.logs_pruned_at, now))
            )
        self._count(report, marked.rowcount)
        report.logs_pruned += marked.rowcount
        await self._pause()

    # -- batches --------------------------------------------------------------------------------

    async def _delete_batched(self, report: SweepReport, table: Table, where: ColumnElement[bool]) -> None:
        """DELETE the rows of `table` matching `where`, at most batch_rows per statement and
        transaction, oldest id first, pausing between statements."""
        chosen: Select[Any] = (
            select(table.c.id)
            .where(where)
            .order_by(table.c.id)
            .limit(self.batch_rows)
            # PostgreSQL: rows another sweep is deleting are left to it (SQLite ignores this).
            .with_for_update(skip_locked=True)
        )
        statement = delete(table).where(table.c.id.in_(chosen))
        while not self._loop.stopping:
            async with self.engine.begin() as conn:
                deleted = (await conn.execute(statement)).rowcount
            self._count(report, deleted)
            report.deleted[table.name] += deleted
            await self._pause()
            if deleted < self.batch_rows:
                return

    def _count(self, report: SweepReport, rows: int) -> None:
        report.statements += 1
        report.largest_statement = max(report.largest_statement, rows)

    async def _pause(self) -> None:
        """Between two statements: let triggers and log writes have the database; on SQLite, keep
        the WAL within the pipeline writer's bound."""
        if self._sqlite_path is not None and _wal_bytes(self._sqlite_path) > WAL_RESTART_BYTES:
            await asyncio.to_thread(_passive_checkpoint, self._sqlite_path)
        if self.pause:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loop.event.wait(), self.pause)


def _wal_bytes(path: str) -> int:
    try:
        return os.path.getsize(f"{path}-wal")
    except OSError:
        return 0


def _passive_checkpoint(path: str) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
