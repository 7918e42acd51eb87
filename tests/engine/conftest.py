"""A real database, broker and scheduler for engine tests; runs are inserted as the trigger would."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.config import Settings
from app.database import create_engine, create_sessionmaker
from app.engine.queue import Scheduler
from app.knot.client import KnotClient
from app.runs.models import LogLine, Pipeline, Status, StatusEvent, WorkflowRun
from app.streams.broker import Broker

SHA = "a" * 40
REPO_DID = "did:plc:repoowner0000000000000000"
WAIT_SECONDS = 90.0  # a safety net against hangs, not a timing assertion


class Harness:
    """One database (+ broker, knot client) shared by any number of schedulers in this process."""

    def __init__(self, *, url: str, make_settings: Callable[..., Settings], tmp_path: Path) -> None:
        self.url = url
        self.make_settings = make_settings
        self.tmp_path = tmp_path
        self.db = create_engine(url)
        self.sessionmaker = create_sessionmaker(self.db)
        self.broker = Broker()
        self.knot = KnotClient(dev=True, timeout=5)
        self.schedulers: list[Scheduler] = []
        self._rkeys = 0

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"database_url": self.url, "data_dir": self.tmp_path / "data", "max_jobs": 2}
        values.update(overrides)
        return self.make_settings(**values)

    def scheduler(self, **overrides: Any) -> Scheduler:
        """A scheduler (not started) on this database; extra keywords go to Settings."""
        kwargs = {
            k: overrides.pop(k)
            for k in ("poll_interval", "heartbeat_interval", "stale_after")
            if k in overrides
        }
        scheduler = Scheduler(
            settings=self.settings(**overrides),
            sessionmaker=self.sessionmaker,
            broker=self.broker,
            knot=self.knot,
            **kwargs,
        )
        self.schedulers.append(scheduler)
        return scheduler

    async def started(self, **overrides: Any) -> Scheduler:
        scheduler = self.scheduler(**overrides)
        await scheduler.start()
        return scheduler

    async def add_run(
        self,
        source: str,
        *,
        name: str = "ci",
        inputs: dict[str, str] | None = None,
        sha: str = SHA,
        knot: str = "knot.example.com",
        repo_did: str = REPO_DID,
        repo_name: str = "demo",
        trigger_kind: str = "manual",
        trigger: dict[str, Any] | None = None,
        status: Status = Status.PENDING,
        claimed_by: str | None = None,
        heartbeat_at: Any = None,
    ) -> int:
        """A pipeline with one workflow run, committed with its first status event."""
        self._rkeys += 1
        async with self.sessionmaker() as session:
            pipeline = Pipeline(
                knot=knot,
                rkey=f"rkey{self._rkeys}",
                repo_did=repo_did,
                repo_name=repo_name,
                sha=sha,
                actor=repo_did,
                trigger_kind=trigger_kind,
                trigger=trigger or {},
                request_digest=f"{self._rkeys:064d}",
            )
            session.add(pipeline)
            await session.flush()
            run = WorkflowRun(
                pipeline_id=pipeline.id,
                name=name,
                path=f".github/workflows/{name}.yml",
                source=textwrap.dedent(source),
                inputs=inputs or {},
                status=status,
                claimed_by=claimed_by,
                heartbeat_at=heartbeat_at,
            )
            session.add(run)
            await session.flush()
            session.add(StatusEvent(workflow_run_id=run.id, status=Status.PENDING))
            if status is not Status.PENDING:
                session.add(StatusEvent(workflow_run_id=run.id, status=status))
            await session.commit()
            run_id = run.id
        for scheduler in self.schedulers:
            scheduler.wake()
        return run_id

    async def get(self, run_id: int) -> WorkflowRun:
        async with self.sessionmaker() as session:
            run = await session.get(WorkflowRun, run_id)
            assert run is not None
            return run

    async def wait(self, run_id: int, *, until: Callable[[WorkflowRun], bool] | None = None) -> WorkflowRun:
        """The run once it has finished (or once `until` holds)."""
        check = until or (lambda run: run.status.is_finished)
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        while True:
            run = await self.get(run_id)
            if check(run):
                return run
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {run_id} still {run.status} after {WAIT_SECONDS} s")
            await asyncio.sleep(0.05)

    async def wait_output(self, run_id: int, text: str) -> None:
        """Until a data line of the run contains `text` (e.g. a step says it has started)."""
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        while not any(text in line for line in await self.output(run_id)):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"run {run_id} never printed {text!r}")
            await asyncio.sleep(0.05)

    async def run(self, source: str, **kwargs: Any) -> WorkflowRun:
        """Insert a run, make sure a scheduler is running, and wait for the run to finish."""
        if not self.schedulers:
            await self.started()
        run_id = await self.add_run(source, **kwargs)
        return await self.wait(run_id)

    async def lines(self, run_id: int) -> list[LogLine]:
        async with self.sessionmaker() as session:
            return list(
                await session.scalars(
                    select(LogLine).where(LogLine.workflow_run_id == run_id).order_by(LogLine.id)
                )
            )

    async def output(self, run_id: int) -> list[str]:
        """The data lines of a run, in order."""
        return [line.content for line in await self.lines(run_id) if line.kind == "data"]

    async def events(self, run_id: int) -> list[StatusEvent]:
        async with self.sessionmaker() as session:
            return list(
                await session.scalars(
                    select(StatusEvent).where(StatusEvent.workflow_run_id == run_id).order_by(StatusEvent.id)
                )
            )

    async def aclose(self) -> None:
        for scheduler in self.schedulers:
            await scheduler.stop()
        await self.knot.close()
        await self.db.dispose()


async def _harness(
    url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Harness]:
    harness = Harness(url=url, make_settings=make_settings, tmp_path=tmp_path)
    try:
        yield harness
    finally:
        await harness.aclose()


@pytest.fixture
async def harness(
    sqlite_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Harness]:
    """Engine harness on SQLite."""
    async for h in _harness(sqlite_url, make_settings, tmp_path):
        yield h


@pytest.fixture
async def any_db_harness(
    database_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Harness]:
    """Engine harness on SQLite and on PostgreSQL (each test runs on both)."""
    async for h in _harness(database_url, make_settings, tmp_path):
        yield h
