"""The group-committing pipeline writer on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_engine, create_sessionmaker
from app.runs import service as runs_service
from app.runs import writer as writer_module
from app.runs.models import Pipeline, Status, StatusEvent, WorkflowRun
from app.runs.status import transition
from app.runs.writer import NewPipeline, PipelineWriter, PlannedRun
from app.xrpc.errors import ServiceUnavailable

KNOT = "knot.example.com"
DID = "did:plc:abcdefghijklmnopqrstuvwx"
RAW_PIPELINE = text('SELECT "trigger", created_at FROM pipeline WHERE rkey = :rkey')
SQLITE_DATETIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
SOURCE = "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"


def new_pipeline(rkey: str | None = None, *, digest: str = "d" * 64, **overrides: Any) -> NewPipeline:
    values: dict[str, Any] = {
        "knot": KNOT,
        "rkey": rkey or "3l" + secrets.token_hex(6),
        "repo_did": DID,
        "repo_name": "hello",
        "sha": "a" * 40,
        "actor": DID,
        "trigger_kind": "manual",
        "trigger": {"inputs": {"greeting": "hi"}},
        "request_digest": digest,
        "runs": [
            PlannedRun(name="ci", path=".github/workflows/ci.yml", source=SOURCE, inputs={"greeting": "hi"}),
            PlannedRun(name="lint", path=".github/workflows/lint.yaml", source=SOURCE, inputs={}),
        ],
    }
    values.update(overrides)
    return NewPipeline(**values)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[PipelineWriter]:
    writer = PipelineWriter(engine=engine)
    await writer.start()
    yield writer
    await writer.stop()


async def test_triggers_queued_together_are_committed_in_one_transaction(writer: PipelineWriter, engine):
    news = [new_pipeline() for _ in range(20)]

    stored = await asyncio.gather(*(writer.record(new) for new in news))

    assert writer.batches == 1
    assert all(s.created for s in stored)
    assert [s.rkey for s in stored] == [new.rkey for new in news]
    assert all(s.workflows == ("ci", "lint") for s in stored)
    run_ids = [event.run_id for s in stored for event in s.events]
    assert len(set(run_ids)) == 40
    async with create_sessionmaker(engine)() as session:
        pipelines = list(await session.scalars(select(Pipeline)))
        events = list(await session.scalars(select(StatusEvent)))
    assert sorted(p.rkey for p in pipelines) == sorted(new.rkey for new in news)
    assert sorted(e.workflow_run_id for e in events) == sorted(run_ids)
    assert sorted(e.id for e in events) == sorted(event.event_id for s in stored for event in s.events)


async def test_the_same_key_twice_in_one_batch_is_recorded_once(writer: PipelineWriter, engine):
    first, second = new_pipeline("3ktwin"), new_pipeline("3ktwin", digest="e" * 64)

    stored = await asyncio.gather(writer.record(first), writer.record(second))

    assert [s.created for s in stored] == [True, False]
    # The second waiter learns what was stored, digest included, to compare with its own.
    assert stored[1].request_digest == "d" * 64
    assert stored[1].workflows == stored[0].workflows
    async with create_sessionmaker(engine)() as session:
        assert len(list(await session.scalars(select(Pipeline)))) == 1
        assert len(list(await session.scalars(select(WorkflowRun)))) == 2


async def test_a_key_stored_before_comes_back_as_the_stored_pipeline(writer: PipelineWriter):
    original = await writer.record(new_pipeline("3kagain"))

    again = await writer.record(new_pipeline("3kagain", digest="e" * 64, sha="b" * 40, runs=[]))

    assert not again.created
    assert (again.sha, again.request_digest, again.workflows) == ("a" * 40, "d" * 64, ("ci", "lint"))
    assert again.events == ()
    assert original.created


async def test_a_row_the_database_refuses_fails_only_its_own_trigger(writer: PipelineWriter, engine):
    run = PlannedRun(name="ci", path=".github/workflows/ci.yml", source=SOURCE, inputs={})
    # Two runs named alike break the (pipeline_id, name) unique constraint: the whole batch rolls back.
    bad = new_pipeline(runs=[run, run])
    good = [new_pipeline() for _ in range(3)]

    results = await asyncio.gather(
        *(writer.record(new) for new in [good[0], bad, *good[1:]]), return_exceptions=True
    )

    assert isinstance(results[1], Exception)
    assert all(not isinstance(r, BaseException) and r.created for r in [results[0], *results[2:]])
    async with create_sessionmaker(engine)() as session:
        rkeys = set(await session.scalars(select(Pipeline.rkey)))
    assert rkeys == {new.rkey for new in good}


async def test_rows_read_back_through_the_orm_as_the_orm_writes_them(writer: PipelineWriter, engine):
    by_writer = await writer.record(new_pipeline("3kwriter"))
    sessions = create_sessionmaker(engine)
    async with sessions() as session:
        # The reference: the same pipeline written through the ORM, as the engine's rows are.
        reference = new_pipeline("3korm")
        orm_pipeline = Pipeline(
            knot=reference.knot,
            rkey=reference.rkey,
            repo_did=reference.repo_did,
            repo_name=reference.repo_name,
            sha=reference.sha,
            actor=reference.actor,
            trigger_kind=reference.trigger_kind,
            trigger=reference.trigger,
            request_digest=reference.request_digest,
        )
        orm_runs = [
            WorkflowRun(pipeline=orm_pipeline, name=r.name, path=r.path, source=r.source, inputs=r.inputs)
            for r in reference.runs
        ]
        session.add(orm_pipeline)
        await session.flush()
        for run in orm_runs:
            transition(session, run, Status.PENDING)
        await session.commit()
    assert by_writer.created

    async with sessions() as session:
        written, orm = [
            await runs_service.find_pipeline(session=session, knot=KNOT, rkey=rkey)
            for rkey in ("3kwriter", "3korm")
        ]
        events = {
            run.name: [
                (e.status, e.error, e.exit_code)
                for e in await session.scalars(
                    select(StatusEvent).where(StatusEvent.workflow_run_id == run.id)
                )
            ]
            for run in written.workflow_runs
        }
        # The stored values themselves, not only what the ORM makes of them.
        raw = {
            rkey: (await session.execute(RAW_PIPELINE, {"rkey": rkey})).one()
            for rkey in ("3kwriter", "3korm")
        }
    assert written is not None and orm is not None
    for column in (
        "knot",
        "repo_did",
        "repo_name",
        "sha",
        "actor",
        "trigger_kind",
        "trigger",
        "request_digest",
    ):
        assert getattr(written, column) == getattr(orm, column), column
    assert type(written.created_at) is type(orm.created_at)
    assert written.created_at.tzinfo == orm.created_at.tzinfo
    assert written.created_at == by_writer.created_at.replace(tzinfo=written.created_at.tzinfo)
    for mine_raw, theirs_raw in zip(raw["3kwriter"], raw["3korm"], strict=True):
        assert type(mine_raw) is type(theirs_raw)
    if isinstance(raw["3korm"].created_at, str):  # SQLite: text in SQLAlchemy's own format
        assert SQLITE_DATETIME.fullmatch(raw["3korm"].created_at)
        assert SQLITE_DATETIME.fullmatch(raw["3kwriter"].created_at)
    for mine, theirs in zip(written.workflow_runs, orm.workflow_runs, strict=True):
        assert (mine.name, mine.path, mine.source, mine.inputs) == (
            theirs.name,
            theirs.path,
            theirs.source,
            theirs.inputs,
        )
        assert (mine.status, mine.cancel_requested, mine.claimed_by) == (Status.PENDING, False, None)
        assert (theirs.status, theirs.cancel_requested) == (Status.PENDING, False)
    assert events == {"ci": [(Status.PENDING, None, None)], "lint": [(Status.PENDING, None, None)]}


async def test_a_stopped_writer_refuses_new_triggers(engine):
    writer = PipelineWriter(engine=engine)
    await writer.start()
    await writer.stop()

    with pytest.raises(ServiceUnavailable):
        await writer.record(new_pipeline())


async def test_sqlite_batch_waits_for_another_connection_holding_the_write_lock(sqlite_url: str):
    engine = create_engine(sqlite_url)
    writer = PipelineWriter(engine=engine)
    await writer.start()
    other = sqlite3.connect(make_url(sqlite_url).database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO status_event (workflow_run_id, status, created_at) SELECT 1, 'x', '' WHERE 0"
        )
        pending = asyncio.ensure_future(writer.record(new_pipeline("3klocked")))
        # The writer never blocks the event loop on the lock: this coroutine keeps running.
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not pending.done()
        other.execute("COMMIT")

        stored = await asyncio.wait_for(pending, 10)

        assert stored.created
    finally:
        other.close()
        await writer.stop()
        await engine.dispose()


PIPELINES = 3500  # over 5 KB each once stored: more than 16 MiB in all
RESTARTS = 40  # RESTART checkpoints the stream of commits outlasts
WAIT_SECONDS = 300.0  # a safety net against hangs, not a timing assertion


async def test_sqlite_wal_stays_bounded_under_a_steady_stream_of_commits(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
):
    # Commits never stop for long enough for a passive checkpoint to copy the last frame, so
    # only the RESTART checkpoint past WAL_RESTART_BYTES lets the WAL start over.
    monkeypatch.setattr(writer_module, "WAL_RESTART_BYTES", 256 * 1024)
    monkeypatch.setattr(writer_module, "CHECKPOINT_INTERVAL", 0.05)
    restarts: list[None] = []
    checkpoint = writer_module._checkpoint

    def counted_checkpoint(path: str, *, restart: bool = False) -> None:
        checkpoint(path, restart=restart)
        if restart:
            restarts.append(None)

    monkeypatch.setattr(writer_module, "_checkpoint", counted_checkpoint)
    wal = Path(make_url(sqlite_url).database + "-wal")
    engine = create_engine(sqlite_url)
    writer = PipelineWriter(engine=engine, max_batch=4)
    await writer.start()
    largest = 0
    stop = asyncio.Event()
    queued = 0

    async def commit_until_enough() -> None:
        # How long the stream lasts is counted in data and in checkpoints, not in seconds: the WAL
        # holds what is committed between two checkpoints, whatever the speed of the machine, and
        # after RESTARTS of them that is a small part of everything written.
        nonlocal queued
        big = {"inputs": {"blob": "x" * 4000}}  # a few pages per pipeline: the WAL grows fast
        while queued < PIPELINES or len(restarts) < RESTARTS:
            queued += 1
            await writer.record(new_pipeline(trigger=big))

    async def watch() -> None:
        nonlocal largest
        while not stop.is_set():
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
            await asyncio.sleep(0.01)

    try:
        watcher = asyncio.create_task(watch())
        async with asyncio.timeout(WAIT_SECONDS):
            await asyncio.gather(*(commit_until_enough() for _ in range(8)))
        stop.set()
        await watcher
        committed = writer.batches
    finally:
        stop.set()
        await writer.stop()
        await engine.dispose()
    with sqlite3.connect(make_url(sqlite_url).database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    written = Path(make_url(sqlite_url).database).stat().st_size

    assert committed > 100 and written > 16 * 1024 * 1024
    # A WAL that never starts over holds every page written since it began: about `written`.
    assert largest < written / 3, f"the WAL grew to {largest / 1e6:.1f} MB for {written / 1e6:.1f} MB of data"
