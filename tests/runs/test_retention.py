"""The retention sweep on real SQLite and PostgreSQL databases: what goes, what stays, in what batches."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import migrate
from app.config import Settings
from app.database import create_engine, create_sessionmaker, utcnow
from app.metrics import Metrics
from app.runs.models import LogLine, Pipeline, Status, StatusEvent, WorkflowRun
from app.runs.retention import RetentionSweeper
from app.streams import watch
from app.streams.broker import Broker
from app.streams.feeds import Feeds
from tests.support.db import new_database
from tests.support.process import SPINDLE

NOW = utcnow()
_rkeys = itertools.count(1)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
def sweeper(engine: AsyncEngine, database_url: str, tmp_path: Path) -> Callable[..., RetentionSweeper]:
    """A sweeper over the test's database; every rule off unless the test turns it on."""

    def make(*, on: AsyncEngine | None = None, **overrides: Any) -> RetentionSweeper:
        values: dict[str, Any] = {
            "database_url": database_url,
            "data_dir": tmp_path / "data",
            "retention_runs_days": 0,
            "retention_logs_days": 0,
            "retention_log_mb": 0,
            "retention_keep_pipelines": 0,
            "retention_pause_ms": 0,
        }
        values.update(overrides)
        return RetentionSweeper(settings=Settings(**values), engine=on or engine, metrics=Metrics())

    return make


async def add_pipeline(
    sessions: async_sessionmaker[AsyncSession],
    *,
    age_days: float,
    statuses: tuple[Status, ...] = (Status.SUCCESS,),
    repo: str = "did:plc:repoaaaaaaaaaaaaaaaaaaaaa",
    lines: int = 3,
    line_bytes: int = 10,
) -> Pipeline:
    """A pipeline created `age_days` ago: a run per status, each with its events and `lines` log lines."""
    created = NOW - timedelta(days=age_days)
    async with sessions() as session:
        pipeline = Pipeline(
            knot="knot.example",
            rkey=f"3l{next(_rkeys):011d}",
            repo_did=repo,
            repo_name="hello",
            sha="a" * 40,
            actor=repo,
            request_digest="0" * 64,
            created_at=created,
        )
        session.add(pipeline)
        await session.flush()
        for index, status in enumerate(statuses):
            finished = status.is_finished
            run = WorkflowRun(
                pipeline_id=pipeline.id,
                name=f"w{index}",
                path=f".github/workflows/w{index}.yml",
                source="on: push\n",
                inputs={},
                status=status,
                created_at=created,
                started_at=None if status is Status.PENDING else created,
                finished_at=created + timedelta(minutes=5) if finished else None,
                log_bytes=lines * line_bytes,
            )
            session.add(run)
            await session.flush()
            history = [Status.PENDING] + ([Status.RUNNING] if status is not Status.PENDING else [])
            history += [status] if finished else []
            for step in history:
                session.add(StatusEvent(workflow_run_id=run.id, status=step, created_at=created))
            for n in range(lines):
                session.add(
                    LogLine(
                        workflow_run_id=run.id,
                        kind="data",
                        content=str(n % 10) * line_bytes,
                        stream="stdout",
                        time=created,
                    )
                )
        await session.commit()
        return pipeline


async def count(sessions: async_sessionmaker[AsyncSession], model: Any, *where: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def rkeys(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessions() as session:
        return set(await session.scalars(select(Pipeline.rkey)))


async def runs(sessions: async_sessionmaker[AsyncSession]) -> dict[int, WorkflowRun]:
    async with sessions() as session:
        return {run.id: run for run in await session.scalars(select(WorkflowRun))}


async def test_deletes_old_finished_pipelines_with_their_runs_events_and_logs(sessions, sweeper) -> None:
    old = await add_pipeline(sessions, age_days=40, statuses=(Status.SUCCESS, Status.FAILED))
    young = await add_pipeline(sessions, age_days=10)

    report = await sweeper(retention_runs_days=30).sweep()

    assert await rkeys(sessions) == {young.rkey}
    assert report.deleted == {"log_line": 6, "status_event": 6, "workflow_run": 2, "pipeline": 1}
    assert await count(sessions, WorkflowRun) == 1
    assert await count(sessions, StatusEvent) == 3
    assert await count(sessions, LogLine) == 3
    assert old.rkey not in await rkeys(sessions)


async def test_never_deletes_a_pipeline_with_a_pending_or_running_run(sessions, sweeper) -> None:
    running = await add_pipeline(sessions, age_days=400, statuses=(Status.SUCCESS, Status.RUNNING))
    pending = await add_pipeline(sessions, age_days=400, statuses=(Status.PENDING,))
    finished = await add_pipeline(sessions, age_days=400, statuses=(Status.CANCELLED,))

    await sweeper(retention_runs_days=30, retention_logs_days=30, retention_log_mb=1).sweep()

    assert await rkeys(sessions) == {running.rkey, pending.rkey}
    assert finished.rkey not in await rkeys(sessions)
    left = await runs(sessions)
    unfinished = [run for run in left.values() if not Status(run.status).is_finished]
    assert len(unfinished) == 2
    for run in unfinished:  # their logs and events are untouched
        assert await count(sessions, LogLine, LogLine.workflow_run_id == run.id) == 3
        assert run.logs_pruned_at is None
    assert await count(sessions, StatusEvent) == 2 + 1 + 3  # running: 2, pending: 1, success: 3


async def test_keeps_the_newest_pipelines_of_each_repo_whatever_their_age(sessions, sweeper) -> None:
    busy = [
        await add_pipeline(sessions, age_days=100 - n, repo="did:plc:busyaaaaaaaaaaaaaaaaaaaa")
        for n in range(5)
    ]
    quiet = await add_pipeline(sessions, age_days=200, repo="did:plc:quietaaaaaaaaaaaaaaaaaaa")

    await sweeper(retention_runs_days=30, retention_keep_pipelines=2).sweep()

    assert await rkeys(sessions) == {busy[3].rkey, busy[4].rkey, quiet.rkey}


async def test_keeps_the_logs_of_the_newest_pipelines_of_each_repo(sessions, sweeper) -> None:
    older = await add_pipeline(sessions, age_days=60)
    newest = await add_pipeline(sessions, age_days=50)

    await sweeper(retention_logs_days=30, retention_keep_pipelines=1).sweep()

    by_pipeline = {run.pipeline_id: run for run in (await runs(sessions)).values()}
    assert by_pipeline[older.id].logs_pruned_at is not None
    assert by_pipeline[newest.id].logs_pruned_at is None
    assert await count(sessions, LogLine) == 3


async def test_prunes_the_logs_of_runs_finished_before_the_cutoff_and_keeps_the_runs(
    sessions, sweeper
) -> None:
    old = await add_pipeline(sessions, age_days=45, statuses=(Status.SUCCESS, Status.FAILED), line_bytes=7)
    young = await add_pipeline(sessions, age_days=5)

    report = await sweeper(retention_runs_days=90, retention_logs_days=30).sweep()

    assert report.logs_pruned == 2
    assert await rkeys(sessions) == {old.rkey, young.rkey}
    left = await runs(sessions)
    for run in left.values():
        lines = await count(sessions, LogLine, LogLine.workflow_run_id == run.id)
        if run.pipeline_id == old.id:
            assert (lines, run.log_bytes) == (0, 0)
            assert run.logs_pruned_at is not None
            assert run.status in (Status.SUCCESS, Status.FAILED)  # the run and its status stay
        else:
            assert (lines, run.log_bytes, run.logs_pruned_at) == (3, 30, None)
    assert await count(sessions, StatusEvent) == 3 + 3 + 3

    again = await sweeper(retention_runs_days=90, retention_logs_days=30).sweep()
    assert again.logs_pruned == 0  # each run is pruned once


async def test_size_cap_removes_the_logs_of_the_oldest_finished_runs_first(sessions, sweeper) -> None:
    kib = 1024
    first, second, third = [
        await add_pipeline(sessions, age_days=3 - n, lines=6, line_bytes=100 * kib) for n in range(3)
    ]
    running = await add_pipeline(
        sessions, age_days=0, statuses=(Status.RUNNING,), lines=6, line_bytes=100 * kib
    )

    report = await sweeper(retention_log_mb=2).sweep()

    # 2.4 MB stored, at most 2 MB kept: the oldest finished run's logs go, and only those.
    assert report.logs_pruned == 1
    by_pipeline = {run.pipeline_id: run for run in (await runs(sessions)).values()}
    assert by_pipeline[first.id].log_bytes == 0
    assert [by_pipeline[p.id].log_bytes for p in (second, third, running)] == [600 * kib] * 3
    assert await count(sessions, LogLine) == 18

    await sweeper(retention_log_mb=1).sweep()

    # 1.8 MB, 1 MB kept: two more go; the running run's 600 kB stay whatever the cap.
    by_pipeline = {run.pipeline_id: run for run in (await runs(sessions)).values()}
    assert [by_pipeline[p.id].log_bytes for p in (first, second, third)] == [0, 0, 0]
    assert by_pipeline[running.id].log_bytes == 600 * kib
    assert await count(sessions, LogLine) == 6


async def test_deletes_in_statements_of_bounded_size(engine, sessions, sweeper) -> None:
    for _ in range(4):
        await add_pipeline(sessions, age_days=60, statuses=(Status.SUCCESS, Status.FAILED), lines=20)
    deleted_per_statement: list[int] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deleted_per_statement.append(cursor.rowcount)

    event.listen(engine.sync_engine, "after_cursor_execute", record)
    try:
        report = await sweeper(retention_runs_days=30, retention_batch_rows=7).sweep()
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", record)

    assert report.deleted == {"log_line": 160, "status_event": 24, "workflow_run": 8, "pipeline": 4}
    assert max(deleted_per_statement) == 7
    assert sum(deleted_per_statement) == 160 + 24 + 8 + 4
    assert len(deleted_per_statement) >= (160 + 24 + 8 + 4) // 7
    assert await count(sessions, Pipeline) == 0


async def test_two_sweepers_at_once_delete_everything_exactly_once(database_url, sessions, sweeper) -> None:
    for n in range(6):
        await add_pipeline(sessions, age_days=60 + n, statuses=(Status.SUCCESS, Status.TIMEOUT), lines=15)
    young = await add_pipeline(sessions, age_days=1)
    other = create_engine(database_url)  # as a second process would: its own engine and connections
    try:
        settings = {"retention_runs_days": 30, "retention_logs_days": 7, "retention_batch_rows": 5}
        one, two = sweeper(**settings), sweeper(on=other, **settings)
        reports = await asyncio.gather(one.sweep(), two.sweep(), one.sweep(), two.sweep())
    finally:
        await other.dispose()

    assert await rkeys(sessions) == {young.rkey}
    totals = {table: sum(r.deleted[table] for r in reports) for table in reports[0].deleted}
    assert totals == {"log_line": 180, "status_event": 36, "workflow_run": 12, "pipeline": 6}
    assert await count(sessions, LogLine) == 3


async def test_rules_set_to_zero_keep_everything(sessions, sweeper) -> None:
    await add_pipeline(sessions, age_days=3650, lines=50, line_bytes=50_000)
    quiet = sweeper(retention_runs_days=0, retention_logs_days=0, retention_log_mb=0)

    assert not quiet.enabled
    report = await quiet.sweep()

    assert not any(report.deleted.values()) and report.logs_pruned == 0
    assert await count(sessions, LogLine) == 50


async def test_a_status_stream_of_a_run_deleted_by_retention_ends(sessions, sweeper) -> None:
    old = await add_pipeline(sessions, age_days=40)
    (run_id,) = (await runs(sessions)).keys()
    await sweeper(retention_runs_days=30).sweep()
    assert old.rkey not in await rkeys(sessions)

    feeds = Feeds(sessionmaker=sessions, broker=Broker())
    # It used to wait for a transition that could never come.
    batches = [batch async for batch in watch.follow_status(feeds=feeds, run_ids=[run_id], idle=None)]

    assert batches == []


async def test_the_metrics_count_what_the_sweep_deleted(sessions, sweeper) -> None:
    await add_pipeline(sessions, age_days=40)
    swept = sweeper(retention_runs_days=30)

    await swept.sweep()

    assert swept.metrics is not None
    text_format = swept.metrics.render().decode()
    assert 'spindle_retention_deleted_rows_total{table="log_line"} 3.0' in text_format
    assert 'spindle_retention_deleted_rows_total{table="pipeline"} 1.0' in text_format
    assert "spindle_retention_last_sweep_timestamp_seconds 0.0" not in text_format


def test_migration_counts_the_bytes_of_logs_stored_before_it(tmp_path: Path) -> None:
    url = new_database("sqlite", tmp_path)
    migrate.downgrade(url, "0001")

    async def fill() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO pipeline (id, knot, rkey, repo_did, repo_name, sha, trigger_kind, trigger, "
                    "request_digest, created_at) VALUES (1, 'k', 'r', 'did:plc:x', 'n', 'a', 'manual', '{}', "
                    "'d', '2026-01-01 00:00:00')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO workflow_run (id, pipeline_id, name, path, source, inputs, status, "
                    "cancel_requested, created_at) VALUES (1, 1, 'ci', 'p', 's', '{}', 'success', 0, "
                    "'2026-01-01 00:00:00')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO log_line (workflow_run_id, kind, content, step_command, time) VALUES "
                    "(1, 'data', 'héllo', NULL, '2026-01-01 00:00:00'), "
                    "(1, 'control', 'step', 'echo hi', '2026-01-01 00:00:00')"
                )
            )
        await engine.dispose()

    asyncio.run(fill())
    migrate.upgrade(url)

    async def read() -> int:
        engine = create_engine(url)
        async with engine.connect() as conn:
            value = await conn.scalar(text("SELECT log_bytes FROM workflow_run WHERE id = 1"))
        await engine.dispose()
        return int(value)

    assert asyncio.run(read()) == len("héllo".encode()) + len("step") + len("echo hi")


async def test_spindle_retention_sweep_applies_the_rules_once(database_url, sessions, tmp_path) -> None:
    await add_pipeline(sessions, age_days=120, statuses=(Status.SUCCESS, Status.FAILED))
    kept = await add_pipeline(sessions, age_days=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINDLE_")}
    env |= {
        "SPINDLE_DATABASE_URL": database_url,
        "SPINDLE_DATA_DIR": str(tmp_path / "data"),
        "SPINDLE_RETENTION_KEEP_PIPELINES": "0",
    }

    done = await asyncio.to_thread(
        subprocess.run, [str(SPINDLE), "retention", "sweep"], env=env, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 6 log_line, 6 status_event, 2 workflow_run, 1 pipeline;")
    assert await rkeys(sessions) == {kept.rkey}


async def test_a_running_service_sweeps_in_the_background(make_spindle, sessions) -> None:
    old = await add_pipeline(sessions, age_days=120)
    young = await add_pipeline(sessions, age_days=1)

    async with make_spindle(retention_runs_days=30, retention_keep_pipelines=0) as spindle:
        swept = 'spindle_retention_deleted_rows_total{table="pipeline"} 1.0'
        async with asyncio.timeout(60):  # a safety net; the sweep runs as the service starts
            while swept not in spindle.ctx.metrics.render().decode():
                await asyncio.sleep(0.05)

    assert await rkeys(sessions) == {young.rkey}
    assert old.rkey not in await rkeys(sessions)
