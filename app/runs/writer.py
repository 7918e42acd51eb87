"""Group commit of new pipelines: one task per process owns the trigger's write path.

    writer = PipelineWriter(engine=engine)
    await writer.start()
    stored = await writer.record(NewPipeline(...))   # returns once the pipeline is committed
    await writer.stop()                              # commits what is queued, then stops

Every trigger queued while a transaction is being written goes into the next one (at most
MAX_BATCH): one commit, and on SQLite one hold of the write lock, for many triggers, instead of
each request's session queueing for the lock. A batch is three multi-row INSERTs (pipelines with
`ON CONFLICT (knot, rkey) DO NOTHING RETURNING`, their workflow runs, their `pending` events) on a
connection the writer keeps to itself, then a COMMIT; only then is any waiter answered.

Exactly once: a (knot, rkey) that is already stored, by an earlier transaction or another process,
inserts nothing and its waiter gets the stored pipeline (`created=False`); two triggers of one
batch with the same key are one insert, and the second gets the first's pipeline. Comparing
request digests is the caller's business (the trigger and knot dispatch). A batch that fails is
rolled back and each of its triggers is written alone, so one bad row fails only its own request.

PostgreSQL: the statements are SQLAlchemy Core on the async engine (asyncpg, no threads).
SQLite file: the batch runs on the event loop's own thread, with the sqlite3 module directly. A
WAL-mode commit with synchronous=NORMAL writes to the OS cache without fsync, so a batch of 16
triggers costs about 1 ms there; handing it to a database thread instead (aiosqlite) costs a GIL
hand-over for every SQLite call, up to 5 ms each while the loop is busy, and SQLAlchemy's
per-row work costs three times the SQL. The values are converted by the columns' own SQLAlchemy
types, so rows read back through the ORM exactly as if it had written them. That connection never
waits for a lock (busy_timeout 0, BEGIN IMMEDIATE): while another connection writes, the batch
sleeps asynchronously and tries again. Checkpoints (which fsync) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, cast

import sqlalchemy.exc
from sqlalchemy import Connection, Dialect, Table, select, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.background import BackgroundLoop
from app.database import utcnow
from app.runs.models import Pipeline, Status, StatusEvent, WorkflowRun
from app.runs.tid import new_tid
from app.xrpc.errors import ServiceUnavailable

log = logging.getLogger(__name__)

MAX_BATCH = 128
# SQLite: how long a batch waits for another connection's write lock before failing (503).
LOCK_TIMEOUT = 30.0
MAX_LOCK_PAUSE = 0.005  # the longest sleep between two tries for that lock
# SQLite: how often committed WAL frames are copied into the database file (in a thread).
CHECKPOINT_INTERVAL = 1.0
# SQLite: a WAL larger than this is checkpointed with RESTART while the writer waits (see
# _checkpoint_loop), and the WAL file is cut back to it when it starts over (journal_size_limit).
WAL_RESTART_BYTES = 64 * 1024 * 1024
RESTART_WAIT_MS = 200  # how long that checkpoint waits for other writers and for readers
# SQLite allows 32766 bound values per statement; multi-row INSERTs are cut below that.
MAX_SQLITE_VARIABLES = 32_000

_PIPELINE = cast(Table, Pipeline.__table__)
_RUN = cast(Table, WorkflowRun.__table__)
_EVENT = cast(Table, StatusEvent.__table__)

PIPELINE_COLUMNS = (
    "knot",
    "rkey",
    "repo_did",
    "repo_name",
    "sha",
    "actor",
    "trigger_kind",
    "trigger",
    "request_digest",
    "created_at",
    "tid",
)
RUN_COLUMNS = ("pipeline_id", "name", "path", "source", "inputs", "status", "cancel_requested", "created_at")
EVENT_COLUMNS = ("workflow_run_id", "status", "created_at")

Key = tuple[str, str]
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """A workflow run to record: the file's stem, path and source, and its resolved inputs."""

    name: str
    path: str
    source: str
    inputs: dict[str, str]


@dataclass(frozen=True, slots=True)
class NewPipeline:
    knot: str
    rkey: str
    repo_did: str
    repo_name: str
    sha: str
    actor: str | None
    trigger_kind: str
    trigger: dict[str, Any]
    request_digest: str
    runs: Sequence[PlannedRun]
    # The pipeline's id in Tangled's CI API; None: a new TID, made when the row is written (so a
    # batch retried after a rare collision of two processes' TIDs gets a fresh one).
    tid: str | None = None


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """The first event of a new workflow run, to announce after the commit."""

    event_id: int
    run_id: int
    workflow: str


@dataclass(frozen=True, slots=True)
class StoredPipeline:
    """A pipeline as committed; `created` is False when (knot, rkey) was already taken."""

    created: bool
    knot: str
    rkey: str
    sha: str
    request_digest: str
    workflows: tuple[str, ...]  # stems, in the order the runs were recorded
    events: tuple[PendingEvent, ...] = ()
    created_at: datetime | None = None


_Waiter = tuple[NewPipeline, "asyncio.Future[StoredPipeline]"]


class _Statements(Protocol):
    """The batch's statements, run inside the caller's transaction; rows are tuples in the
    order of PIPELINE_COLUMNS / RUN_COLUMNS / EVENT_COLUMNS."""

    def pipelines(self, rows: list[Row]) -> list[tuple[int, str, str]]:
        """Insert unless (knot, rkey) exists; (id, knot, rkey) of the rows inserted."""

    def runs(self, rows: list[Row]) -> list[tuple[int, int, str]]:
        """(id, pipeline_id, name) of each run inserted."""

    def events(self, rows: list[Row]) -> list[tuple[int, int]]:
        """(id, workflow_run_id) of each event inserted."""

    def find(self, keys: list[Key]) -> list[tuple[str, str, str, str, str | None]]:
        """(knot, rkey, sha, request_digest, run name or None) of stored pipelines, in id order."""


class PipelineWriter:
    """Commits queued pipelines in batches on a connection of its own; see the module docstring."""

    def __init__(self, *, engine: AsyncEngine, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        dialect = engine.dialect.name
        database = engine.url.database
        if dialect == "sqlite" and database not in (None, "", ":memory:"):
            self._sqlite_path: str | None = database
        elif dialect == "postgresql":
            self._sqlite_path = None
        else:
            raise ValueError(f"the pipeline writer needs PostgreSQL or a SQLite file, not {engine.url!r}")
        self._sqlite: _SqliteStatements | None = None
        self._conn: AsyncConnection | None = None
        self._queue: deque[_Waiter] = deque()
        self._loop = BackgroundLoop()
        self._checkpoints: asyncio.Task[None] | None = None
        self._dirty = False
        self._resumed = asyncio.Event()  # cleared while a RESTART checkpoint runs
        self._resumed.set()
        self.batches = 0  # transactions committed, for tests and benchmarks

    async def start(self) -> None:
        if self._sqlite_path is not None:
            self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="pipeline-checkpoints")
        self._loop.start(self._run(), name="pipeline-writer")

    async def stop(self) -> None:
        """Commit what is queued, then close the writer's connection."""
        await self._loop.stop()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
            self._checkpoints = None
        await self._discard()

    async def record(self, new: NewPipeline) -> StoredPipeline:
        """Queue `new` for the next batch and wait until it is committed (or found already stored)."""
        if not self._loop.running:
            raise ServiceUnavailable("the service is shutting down; try again shortly")
        future: asyncio.Future[StoredPipeline] = asyncio.get_running_loop().create_future()
        self._queue.append((new, future))
        self._loop.event.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._loop.stopping:
                    return
                self._loop.event.clear()
                await self._loop.event.wait()
                continue
            if not self._resumed.is_set():
                await self._resumed.wait()  # a RESTART checkpoint is copying the WAL
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            try:
                await self._write(batch)
            except BaseException:  # cancelled: nobody may be left waiting
                for _, future in [*batch, *self._queue]:
                    _settle(future, ServiceUnavailable("the service is shutting down; try again shortly"))
                raise

    async def _write(self, batch: list[_Waiter]) -> None:
        try:
            stored = await self._commit([new for new, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            log.warning("a batch of %d pipelines failed (%r): writing each alone", len(batch), exc)
            for new, future in batch:
                try:
                    [alone] = await self._commit([new])
                except Exception as single:
                    _settle(future, single)
                else:
                    _settle(future, alone)
            return
        self.batches += 1
        for (_, future), result in zip(batch, stored, strict=True):
            _settle(future, result)

    async def _commit(self, items: list[NewPipeline]) -> list[StoredPipeline]:
        """Write `items` in one transaction; a StoredPipeline for each, in order."""
        if self._sqlite_path is not None:
            return await self._commit_sqlite(items)
        while True:
            fresh = self._conn is None or self._conn.closed or self._conn.invalidated
            try:
                if fresh:
                    await self._discard()
                    self._conn = await self.engine.connect()
                assert self._conn is not None
                return await self._conn.run_sync(self._core_transaction, items)
            except BaseException as exc:
                # Whatever state the connection is in (broken, mid-rollback), it is not used again.
                await self._discard()
                # The kept connection died while idle (the server restarted, an idle timeout): once
                # more on a new one. Safe even if a lost COMMIT went through: those pipelines then
                # come back as already stored, with this very digest.
                if not fresh and isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
                    continue
                raise

    def _core_transaction(self, conn: Connection, items: list[NewPipeline]) -> list[StoredPipeline]:
        with conn.begin():
            return _insert(_CoreStatements(conn), items)

    async def _commit_sqlite(self, items: list[NewPipeline]) -> list[StoredPipeline]:
        assert self._sqlite_path is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_TIMEOUT
        pause = 0.0005
        while True:
            try:
                if self._sqlite is None:
                    self._sqlite = _SqliteStatements(self._sqlite_path, self.engine.dialect)
                statements = self._sqlite
                db = statements.db
                # Driver autocommit: this BEGIN is the transaction, and it takes the write lock now.
                db.execute("BEGIN IMMEDIATE")
                try:
                    stored = _insert(statements, items)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                self._dirty = True
                return stored
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or loop.time() + pause > deadline:
                    await self._discard()
                    raise _wrapped(exc) from exc
            except sqlite3.Error as exc:
                await self._discard()
                raise _wrapped(exc) from exc
            except BaseException:
                await self._discard()
                raise
            await asyncio.sleep(pause)  # another connection is writing
            # Capped low: the engine's writes hold the lock for milliseconds, and a trigger that
            # slept 50 ms past their end was the soak's p99 (563 ms with a 50 ms cap, 84 ms now).
            pause = min(pause * 2, MAX_LOCK_PAUSE)

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        statements, self._sqlite = self._sqlite, None
        if statements is not None:
            with contextlib.suppress(Exception):
                statements.db.close()

    async def _checkpoint_loop(self) -> None:
        path = self._sqlite_path
        assert path is not None
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if not self._dirty:
                continue
            self._dirty = False
            try:
                if _wal_bytes(path) <= WAL_RESTART_BYTES:
                    await asyncio.to_thread(_checkpoint, path)
                    continue
                # A passive checkpoint copies the frames committed when it began; under a steady
                # stream of commits newer ones always remain, the WAL is never started over and it
                # grows without bound. Past WAL_RESTART_BYTES this writer pauses (its triggers
                # queue up) while a RESTART checkpoint copies everything; the next commit then
                # starts the WAL over, and the file is cut back to WAL_RESTART_BYTES.
                self._resumed.clear()
                try:
                    await asyncio.to_thread(_checkpoint, path, restart=True)
                finally:
                    self._resumed.set()
            except Exception as exc:
                log.warning("SQLite checkpoint failed: %r", exc)


def _insert(statements: _Statements, items: list[NewPipeline]) -> list[StoredPipeline]:
    """The batch, inside the caller's transaction: a StoredPipeline for each item, in order."""
    now = utcnow()
    # The first trigger of a (knot, rkey) in the batch is the one inserted; keys are locked in
    # one order, so two processes' batches cannot deadlock on PostgreSQL.
    leaders: dict[Key, NewPipeline] = {}
    for new in items:
        leaders.setdefault((new.knot, new.rkey), new)
    leaders = dict(sorted(leaders.items()))
    inserted = statements.pipelines(
        [
            (
                new.knot,
                new.rkey,
                new.repo_did,
                new.repo_name,
                new.sha,
                new.actor,
                new.trigger_kind,
                new.trigger,
                new.request_digest,
                now,
                new.tid or new_tid(),
            )
            for new in leaders.values()
        ]
    )
    created = {(knot, rkey): pipeline_id for pipeline_id, knot, rkey in inserted}
    stored = _insert_runs_and_events(statements, leaders, created, now)
    taken = [key for key in leaders if key not in created]
    if taken:
        stored.update(_stored(statements.find(taken)))
    results = []
    for new in items:
        key = (new.knot, new.rkey)
        found = stored.get(key)
        if found is None:
            # Only the retention sweep deletes pipelines (old, finished ones): one deleted between
            # the INSERT and this read fails the batch, and written alone it is inserted afresh.
            raise RuntimeError(f"pipeline {key} conflicted but could not be read back")
        if found.created and leaders[key] is not new:
            # A duplicate within the batch: it sees the leader's pipeline as already taken.
            found = replace(found, created=False, events=(), created_at=None)
        results.append(found)
    return results


def _insert_runs_and_events(
    statements: _Statements, leaders: dict[Key, NewPipeline], created: dict[Key, int], now: datetime
) -> dict[Key, StoredPipeline]:
    if not created:
        return {}
    inserted = statements.runs(
        [
            (pipeline_id, run.name, run.path, run.source, run.inputs, Status.PENDING, False, now)
            for key, pipeline_id in created.items()
            for run in leaders[key].runs
        ]
    )
    # Rows come back in no promised order: (pipeline_id, name) says whose each one is.
    runs: dict[int, list[tuple[int, str]]] = {}
    for run_id, pipeline_id, name in inserted:
        runs.setdefault(pipeline_id, []).append((run_id, name))
    events = statements.events([(run_id, Status.PENDING, now) for run_id, _, _ in inserted])
    event_ids = dict((run_id, event_id) for event_id, run_id in events)
    stored = {}
    for key, pipeline_id in created.items():
        new = leaders[key]
        named = sorted(runs.get(pipeline_id, []))
        stored[key] = StoredPipeline(
            created=True,
            knot=new.knot,
            rkey=new.rkey,
            sha=new.sha,
            request_digest=new.request_digest,
            workflows=tuple(name for _, name in named),
            events=tuple(PendingEvent(event_ids[run_id], run_id, name) for run_id, name in named),
            created_at=now,
        )
    return stored


def _stored(rows: list[tuple[str, str, str, str, str | None]]) -> dict[Key, StoredPipeline]:
    found: dict[Key, tuple[str, str, list[str]]] = {}
    for knot, rkey, sha, digest, name in rows:
        _, _, names = found.setdefault((knot, rkey), (sha, digest, []))
        if name is not None:
            names.append(name)
    return {
        key: StoredPipeline(
            created=False,
            knot=key[0],
            rkey=key[1],
            sha=sha,
            request_digest=digest,
            workflows=tuple(names),
        )
        for key, (sha, digest, names) in found.items()
    }


class _CoreStatements:
    """The statements as SQLAlchemy Core, on a (run_sync) connection of the async engine."""

    _pipelines = (
        postgresql.insert(_PIPELINE)
        .on_conflict_do_nothing(index_elements=["knot", "rkey"])
        .returning(_PIPELINE.c.id, _PIPELINE.c.knot, _PIPELINE.c.rkey)
    )
    _runs = postgresql.insert(_RUN).returning(_RUN.c.id, _RUN.c.pipeline_id, _RUN.c.name)
    _events = postgresql.insert(_EVENT).returning(_EVENT.c.id, _EVENT.c.workflow_run_id)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _many(self, statement: Any, columns: tuple[str, ...], rows: list[Row]) -> list[Any]:
        params = [dict(zip(columns, row, strict=True)) for row in rows]
        return [tuple(row) for row in self.conn.execute(statement, params)]

    def pipelines(self, rows: list[Row]) -> list[tuple[int, str, str]]:
        return self._many(self._pipelines, PIPELINE_COLUMNS, rows)

    def runs(self, rows: list[Row]) -> list[tuple[int, int, str]]:
        return self._many(self._runs, RUN_COLUMNS, rows)

    def events(self, rows: list[Row]) -> list[tuple[int, int]]:
        return self._many(self._events, EVENT_COLUMNS, rows)

    def find(self, keys: list[Key]) -> list[tuple[str, str, str, str, str | None]]:
        query = (
            select(
                _PIPELINE.c.knot, _PIPELINE.c.rkey, _PIPELINE.c.sha, _PIPELINE.c.request_digest, _RUN.c.name
            )
            .select_from(_PIPELINE.outerjoin(_RUN, _RUN.c.pipeline_id == _PIPELINE.c.id))
            .where(tuple_(_PIPELINE.c.knot, _PIPELINE.c.rkey).in_(keys))
            .order_by(_PIPELINE.c.id, _RUN.c.id)
        )
        return [tuple(row) for row in self.conn.execute(query)]  # type: ignore[misc]


class _SqliteInsert:
    """One multi-row INSERT ... RETURNING with the sqlite3 module; each value converted by its
    column's SQLAlchemy type (JSON, DateTime, Enum), as the ORM would store it."""

    def __init__(self, dialect: Dialect, table: Table, columns: tuple[str, ...], tail: str) -> None:
        quote = dialect.identifier_preparer.quote
        self.head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) VALUES "
        self.tail = " " + tail
        self.values = "(" + ", ".join("?" * len(columns)) + ")"
        # Only the columns whose type converts its values (JSON, DateTime, Enum, Boolean).
        self.convert: list[tuple[int, Callable[[Any], Any]]] = []
        for index, name in enumerate(columns):
            convert = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if convert is not None:
                self.convert.append((index, convert))
        self.rows_per_statement = MAX_SQLITE_VARIABLES // len(columns)
        self._sql: dict[int, str] = {}

    def __call__(self, db: sqlite3.Connection, rows: list[Row]) -> list[Any]:
        returned: list[Any] = []
        # A value repeated down a column (the batch's timestamp, `pending`, an empty JSON object)
        # is converted once.
        memo: dict[tuple[int, Any], Any] = {}
        for start in range(0, len(rows), self.rows_per_statement):
            part = rows[start : start + self.rows_per_statement]
            sql = self._sql.get(len(part))
            if sql is None:
                sql = self._sql[len(part)] = self.head + ", ".join([self.values] * len(part)) + self.tail
            params: list[Any] = []
            for row in part:
                values = list(row)
                for index, convert in self.convert:
                    value = values[index]
                    if value is None:
                        continue
                    if isinstance(value, dict | list):
                        if value:
                            values[index] = convert(value)
                            continue
                        key: tuple[int, Any] = (index, type(value))
                    else:
                        key = (index, value)
                    converted = memo.get(key, memo)
                    if converted is memo:
                        converted = memo[key] = convert(value)
                    values[index] = converted
                params += values
            returned.extend(db.execute(sql, params).fetchall())
        return returned


# WAL as the other connections use it; autocheckpoint off: _checkpoint does it, in a thread.
_WRITER_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0")


class _SqliteStatements:
    """The statements on a sqlite3 connection of the writer's own, used on the event loop."""

    def __init__(self, path: str, dialect: Dialect) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            for pragma in (*_WRITER_PRAGMAS, f"journal_size_limit={WAL_RESTART_BYTES}"):
                self.db.execute(f"PRAGMA {pragma}")
        except BaseException:
            self.db.close()
            raise
        self._pipelines = _SqliteInsert(
            dialect,
            _PIPELINE,
            PIPELINE_COLUMNS,
            "ON CONFLICT (knot, rkey) DO NOTHING RETURNING id, knot, rkey",
        )
        self._runs = _SqliteInsert(dialect, _RUN, RUN_COLUMNS, "RETURNING id, pipeline_id, name")
        self._events = _SqliteInsert(dialect, _EVENT, EVENT_COLUMNS, "RETURNING id, workflow_run_id")

    def pipelines(self, rows: list[Row]) -> list[tuple[int, str, str]]:
        return self._pipelines(self.db, rows)

    def runs(self, rows: list[Row]) -> list[tuple[int, int, str]]:
        return self._runs(self.db, rows)

    def events(self, rows: list[Row]) -> list[tuple[int, int]]:
        return self._events(self.db, rows)

    def find(self, keys: list[Key]) -> list[tuple[str, str, str, str, str | None]]:
        keyed = ", ".join(["(?, ?)"] * len(keys))
        return self.db.execute(
            "SELECT p.knot, p.rkey, p.sha, p.request_digest, r.name FROM pipeline AS p "
            "LEFT OUTER JOIN workflow_run AS r ON r.pipeline_id = p.id "
            f"WHERE (p.knot, p.rkey) IN (VALUES {keyed}) ORDER BY p.id, r.id",
            [part for key in keys for part in key],
        ).fetchall()


def _checkpoint(path: str, *, restart: bool = False) -> None:
    """Copy committed WAL frames into the database file, in a thread. PASSIVE waits for nobody;
    RESTART waits (a little) for the write lock and for readers, so that the next commit can
    start the WAL over from its beginning."""
    with contextlib.closing(sqlite3.connect(path, timeout=RESTART_WAIT_MS / 1000 if restart else 0)) as db:
        db.execute(f"PRAGMA wal_checkpoint({'RESTART' if restart else 'PASSIVE'})")


def _wal_bytes(path: str) -> int:
    try:
        return os.path.getsize(f"{path}-wal")
    except OSError:
        return 0


def _wrapped(exc: sqlite3.Error) -> sqlalchemy.exc.StatementError:
    # As SQLAlchemy would raise it: a locked or unreadable database is a 503, not a 500.
    return sqlalchemy.exc.DBAPIError.instance(None, None, exc, sqlite3.Error)


def _settle(future: asyncio.Future[StoredPipeline], outcome: StoredPipeline | BaseException) -> None:
    # A waiter that went away (its request was cancelled) still had its pipeline committed.
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
