"""The durable run queue: pending WorkflowRun rows are the queue, this process claims and runs them.

    scheduler = Scheduler(settings=, sessionmaker=, broker=, knot=)   # backend= to plug another in
    await scheduler.start()      # start the container engine, fail our own runs a crash left
                                 # `running`, remove the containers of runs that no longer run
    scheduler.wake()             # a run was just inserted: look now rather than at the next poll
    await scheduler.cancel(id)   # pending → cancelled at once; running → killed, then cancelled
    await scheduler.stop()       # kill what runs here; those runs end `failed`

- Fair: each round takes the oldest pending run of each repo, repos with the fewest running runs
  first, then the repo served longest ago (`next_runs`, RepoTurn), so a repo's flood waits
  behind itself.
- Claiming is one conditional UPDATE (`status = pending AND claimed_by IS NULL` → running,
  claimed_by = this instance), so processes sharing a database never run one run twice.
- At most `settings.max_jobs` runs execute in this process at once; the rest stay pending
  (a restart loses nothing: pending rows are simply claimed later).
- Each running run's `heartbeat_at` is refreshed every HEARTBEAT_INTERVAL seconds. At start,
  runs left `running` by this instance (its id is stable across restarts) are failed; runs of
  other instances whose heartbeat is older than STALE_AFTER seconds are failed too.
- A cancel from another process reaches the owner through `cancel_requested`, polled with
  the queue. Every status change goes through `app.runs.status.transition`, is committed, then
  announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Result, and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.background import BackgroundLoop
from app.config import Settings
from app.database import utcnow
from app.engine.actions import ActionCache
from app.engine.backend import Backend
from app.engine.container import images
from app.engine.container.backend import ContainerBackend, deployment_id
from app.engine.context import RunSpec
from app.engine.logs import LogSink
from app.engine.masking import Masker
from app.engine.models import RepoTurn
from app.engine.runner import RunOutcome, WorkflowRunner
from app.knot.client import KnotClient
from app.metrics import Metrics, seconds_between
from app.runs.models import Pipeline, Status, WorkflowRun
from app.runs.status import announce, transition
from app.secrets import service as secrets_service
from app.secrets.crypto import SecretCipher
from app.streams.broker import Broker

log = logging.getLogger(__name__)

KILL_GRACE = 5.0
POLL_INTERVAL = 1.0
HEARTBEAT_INTERVAL = 10.0
STALE_AFTER = 60.0
RESTART_ERROR = "the spindle restarted while this run was running"
SHUTDOWN_ERROR = "the spindle shut down while this run was running"
CANCELLED_PENDING = "cancelled before it started"
# Recording a run's end is retried this often (doubling) while the database is unavailable.
FINISH_RETRY_START = 0.5
FINISH_RETRY_MAX = 5.0


async def next_runs(session: AsyncSession, *, limit: int) -> list[int]:
    """The oldest pending run of each repo, in the order repos get their turn: fewest running runs
    first, then the repo whose last claim (RepoTurn) is oldest or that never had one, then the
    oldest run. One repo's flood of runs cannot starve another's: each claim sends its repo to the
    back of the line.

    The groupings read only `pending` and `running` rows (the status index), which the queued-runs
    cap per repo (app.runs.quota) and SPINDLE_MAX_JOBS per process keep few; turns by primary key.
    """
    repo = (Pipeline.knot, Pipeline.repo_did, Pipeline.repo_name)
    waiting = (
        select(*repo, func.min(WorkflowRun.id).label("first_id"))
        .select_from(WorkflowRun)
        .join(Pipeline, WorkflowRun.pipeline_id == Pipeline.id)
        .where(WorkflowRun.status == Status.PENDING, WorkflowRun.claimed_by.is_(None))
        .group_by(*repo)
        .subquery("waiting")
    )
    running = (
        select(*repo, func.count().label("running"))
        .select_from(WorkflowRun)
        .join(Pipeline, WorkflowRun.pipeline_id == Pipeline.id)
        .where(WorkflowRun.status == Status.RUNNING)
        .group_by(*repo)
        .subquery("running")
    )

    def same_repo(other: Any) -> Any:
        return and_(
            other.knot == waiting.c.knot,
            other.repo_did == waiting.c.repo_did,
            other.repo_name == waiting.c.repo_name,
        )

    turn = RepoTurn.__table__.c
    rows = await session.scalars(
        select(waiting.c.first_id)
        .outerjoin(running, same_repo(running.c))
        .outerjoin(RepoTurn, same_repo(turn))
        .order_by(
            func.coalesce(running.c.running, 0),
            # Never served first (NULLS FIRST, spelled the same on SQLite and PostgreSQL).
            case((turn.claimed_at.is_(None), 0), else_=1),
            turn.claimed_at,
            waiting.c.first_id,
        )
        .limit(limit)
    )
    return list(rows)


async def take_turn(session: AsyncSession, *, knot: str, repo_did: str, repo_name: str) -> None:
    """Send the repo to the back of the line: its last claim is now."""
    key = (RepoTurn.knot == knot, RepoTurn.repo_did == repo_did, RepoTurn.repo_name == repo_name)
    now = utcnow()
    moved = await session.execute(update(RepoTurn).where(*key).values(claimed_at=now))
    if moved.rowcount == 0:  # type: ignore[attr-defined]
        session.add(RepoTurn(knot=knot, repo_did=repo_did, repo_name=repo_name, claimed_at=now))
    try:
        await session.commit()
    except IntegrityError:
        # Another process inserted the repo's first turn at the same moment: as good.
        await session.rollback()


def default_instance_id(settings: Settings) -> str:
    """hostname + a digest of the data directory and listen address: the same service
    restarted gets the same id, two services on one host sharing a database get different ones."""
    place = f"{settings.data_dir.resolve()}|{settings.listen}"
    return f"{socket.gethostname()}-{hashlib.sha256(place.encode()).hexdigest()[:12]}"


class _SecretsUnavailable(Exception):
    """The run's secrets exist but cannot be opened (a wrong key, a tampered row)."""


@dataclass
class _Active:
    task: asyncio.Task[None] | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    shutdown: bool = False


class Scheduler:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        broker: Broker,
        knot: KnotClient,
        backend: Backend | None = None,
        secrets: SecretCipher | None = None,
        metrics: Metrics | None = None,
        poll_interval: float = POLL_INTERVAL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.broker = broker
        self.knot = knot
        self.metrics = metrics or Metrics()
        self.instance_id = settings.instance_id or default_instance_id(settings)
        self.backend: Backend = backend or ContainerBackend(
            settings=settings, instance_id=self.instance_id, deployment=deployment_id(settings)
        )
        self.secrets = secrets or SecretCipher.from_settings(settings)
        self._image: asyncio.Task[None] | None = None
        # Job containers running at once in this process, across all its runs (SPINDLE_MAX_JOBS).
        self.job_slots = asyncio.Semaphore(settings.max_jobs)
        # Fetched actions, shared by every run of the process (SPINDLE_ACTIONS_*).
        self.actions = ActionCache(settings)
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.active: dict[int, _Active] = {}
        self._loop = BackgroundLoop()
        self._last_heartbeat = float("-inf")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine, fail runs a previous life of this instance left running, remove what
        they left in the engine, start polling (once the default runner image exists)."""
        await self.backend.start()
        log.info("scheduler %s: jobs run in %s", self.instance_id, self.backend.describe())
        await self._recover()
        await self._reap()
        self._image = asyncio.create_task(self._runner_image(), name="runner image")
        self._loop.start(self._run(), name="scheduler")

    async def _reap(self) -> None:
        """Containers of runs that no process runs any more (a crash, a kill -9) are removed."""
        if isinstance(self.backend, ContainerBackend) and self.backend.unavailable is not None:
            return

        async def running() -> set[int]:
            async with self.sessionmaker() as session:
                ids = await session.scalars(
                    select(WorkflowRun.id).where(
                        WorkflowRun.status == Status.RUNNING, WorkflowRun.claimed_by != self.instance_id
                    )
                )
                return {*ids, *self.active}

        try:
            removed = await self.backend.reap(running=running)
        except Exception:
            log.exception("could not remove the leftovers of earlier runs")
            return
        if removed:
            log.warning("removed %d containers left by runs that no longer run", removed)

    async def _runner_image(self) -> None:
        """The default runner image, built when missing, before the first job (it takes minutes)."""
        if not isinstance(self.backend, ContainerBackend) or self.backend.docker is None:
            return
        try:
            await images.ensure_default_runner_image(
                self.backend.docker,
                settings=self.settings,
                progress=lambda line: log.info("runner image: %s", line),
            )
        except images.ImageError as exc:
            log.error("the default runner image could not be built: %s", exc)

    async def stop(self) -> None:
        """Stop claiming; kill the runs of this process (they end `failed`) and wait for them."""
        await self._loop.stop()
        for active in self.active.values():
            active.shutdown = True
            active.cancel.set()
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=KILL_GRACE + 30)
        if self._image is not None:
            self._image.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._image
        await self.backend.close()

    def wake(self) -> None:
        """Look for pending runs now (call after committing new runs)."""
        self._loop.event.set()

    # -- cancel ----------------------------------------------------------------------------------

    async def cancel(self, run_id: int) -> Status | None:
        """Ask a run to stop. Pending: cancelled right away. Running here: its step is killed and it
        ends `cancelled`; running in another process: that process sees `cancel_requested` within
        a poll interval. Finished: nothing changes. Returns the status now, None for no such run."""
        async with self.sessionmaker() as session:
            claimed = await session.execute(
                update(WorkflowRun)
                .where(WorkflowRun.id == run_id, WorkflowRun.status == Status.PENDING)
                .values(status=Status.CANCELLED, cancel_requested=True)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                run = await session.get(WorkflowRun, run_id, populate_existing=True)
                assert run is not None
                event = transition(session, run, Status.CANCELLED, error=CANCELLED_PENDING)
                await session.commit()
                announce(self.broker, run, event)
                self.metrics.run_finished(Status.CANCELLED, None)
                return Status.CANCELLED
            await session.execute(
                update(WorkflowRun)
                .where(WorkflowRun.id == run_id, WorkflowRun.status == Status.RUNNING)
                .values(cancel_requested=True)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
            run = await session.get(WorkflowRun, run_id, populate_existing=True)
            if run is None:
                return None
            status = run.status
        active = self.active.get(run_id)
        if active is not None:
            active.cancel.set()
        return status

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        if self._image is not None:
            await asyncio.shield(self._image)  # no job before the default image exists
        while not self._loop.stopping:
            try:
                await self._tick()
            except Exception:
                # A database hiccup must not end the queue; the next tick tries again.
                log.exception("scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loop.event.wait(), self.poll_interval)
            self._loop.event.clear()

    async def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        if self.active:
            await self._poll_cancels()
        if now - self._last_heartbeat >= self.heartbeat_interval:
            self._last_heartbeat = now
            await self._heartbeat()
            await self._sweep_stale()
        if not self._loop.stopping:
            await self._claim()

    async def _poll_cancels(self) -> None:
        ids = list(self.active)
        async with self.sessionmaker() as session:
            rows = await session.scalars(
                select(WorkflowRun.id).where(WorkflowRun.id.in_(ids), WorkflowRun.cancel_requested.is_(True))
            )
            for run_id in rows:
                active = self.active.get(run_id)
                if active is not None:
                    active.cancel.set()

    async def _heartbeat(self) -> None:
        if not self.active:
            return
        async with self.sessionmaker() as session:
            await session.execute(
                update(WorkflowRun)
                .where(
                    WorkflowRun.id.in_(list(self.active)),
                    WorkflowRun.claimed_by == self.instance_id,
                    WorkflowRun.status == Status.RUNNING,
                )
                .values(heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            await session.commit()

    async def _recover(self) -> None:
        async with self.sessionmaker() as session:
            ids = list(
                await session.scalars(
                    select(WorkflowRun.id).where(
                        WorkflowRun.status == Status.RUNNING, WorkflowRun.claimed_by == self.instance_id
                    )
                )
            )
        for run_id in ids:
            if await self._finish(run_id, RunOutcome(Status.FAILED, RESTART_ERROR), owner=self.instance_id):
                log.warning("run %d was running when this spindle stopped: marked failed", run_id)

    async def _sweep_stale(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.stale_after)
        async with self.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(WorkflowRun.id, WorkflowRun.claimed_by).where(
                        WorkflowRun.status == Status.RUNNING,
                        or_(WorkflowRun.claimed_by.is_(None), WorkflowRun.claimed_by != self.instance_id),
                        or_(WorkflowRun.heartbeat_at.is_(None), WorkflowRun.heartbeat_at < cutoff),
                    )
                )
            ).all()
        for run_id, owner in rows:
            error = (
                f"the spindle running this run ({owner}) stopped sending heartbeats "
                f"for over {self.stale_after:g} s"
            )
            if await self._finish(run_id, RunOutcome(Status.FAILED, error), owner=owner, stale_before=cutoff):
                log.warning("run %d of %s had a stale heartbeat: marked failed", run_id, owner)

    async def _claim(self) -> None:
        """Claim pending runs while slots are free, one per repo per round, fairest first."""
        while len(self.active) < self.settings.max_jobs and not self._loop.stopping:
            free = self.settings.max_jobs - len(self.active)
            async with self.sessionmaker() as session:
                candidates = await next_runs(session, limit=free * 2)
            claimed = False
            for run_id in candidates:
                if len(self.active) >= self.settings.max_jobs or self._loop.stopping:
                    return
                spec = await self._try_claim(run_id)
                if spec is not None:
                    claimed = True
                    active = _Active()
                    self.active[run_id] = active
                    active.task = asyncio.create_task(self._execute(spec, active), name=f"run-{run_id}")
            if not claimed:
                return

    async def _try_claim(self, run_id: int) -> RunSpec | None:
        """Take one pending run for this instance; None when another process was quicker."""
        async with self.sessionmaker() as session:
            now = utcnow()
            claimed = await session.execute(
                update(WorkflowRun)
                .where(
                    WorkflowRun.id == run_id,
                    WorkflowRun.status == Status.PENDING,
                    WorkflowRun.claimed_by.is_(None),
                )
                .values(status=Status.RUNNING, claimed_by=self.instance_id, heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )
            run = await self._commit_transition(session, claimed, run_id, Status.RUNNING)
            if run is None:
                return None
            spec = self._spec(run)
        try:
            async with self.sessionmaker() as session:
                await take_turn(session, knot=spec.knot, repo_did=spec.repo_did, repo_name=spec.repo_name)
        except Exception:
            # Only the order of later claims depends on it; the run itself is claimed.
            log.warning("could not record the turn of run %d's repo", run_id, exc_info=True)
        return spec

    def _spec(self, run: WorkflowRun) -> RunSpec:
        pipeline = run.pipeline
        return RunSpec(
            run_id=run.id,
            workflow=run.name,
            path=run.path,
            source=run.source,
            inputs=dict(run.inputs or {}),
            knot=pipeline.knot,
            pipeline_rkey=pipeline.rkey,
            pipeline_uri=pipeline.pipeline_uri,
            repo_did=pipeline.repo_did,
            repo_name=pipeline.repo_name,
            sha=pipeline.sha,
            actor=pipeline.actor,
            trigger_kind=pipeline.trigger_kind,
            trigger=dict(pipeline.trigger or {}),
            clone_url=self.knot.clone_url(
                knot=pipeline.knot, repo_did=pipeline.repo_did, repo_name=pipeline.repo_name
            ),
            knot_url=self.knot.base_url(pipeline.knot),
        )

    async def _run_secrets(self, spec: RunSpec) -> tuple[RunSpec, str | None, str | None]:
        """`spec` with its secrets; a note when they were withheld; an error when they could not be
        opened (the run then fails before any step runs, naming the key, never a value)."""
        try:
            found = await secrets_service.for_run(
                sessionmaker=self.sessionmaker,
                cipher=self.secrets,
                pipeline=spec,
                knot=spec.knot,
                name=spec.repo_name,
            )
        except Exception as exc:
            log.warning("run %d: could not open its repo's secrets: %s", spec.run_id, type(exc).__name__)
            return spec, None, f"the repo's secrets could not be opened: {exc}"
        return dataclasses.replace(spec, secrets=found.values), found.withheld, None

    async def _execute(self, spec: RunSpec, active: _Active) -> None:
        spec, withheld, secrets_error = await self._run_secrets(spec)
        logs = LogSink(
            run_id=spec.run_id,
            sessionmaker=self.sessionmaker,
            broker=self.broker,
            max_bytes=self.settings.run_log_mb * 1024 * 1024,
            masker=Masker(tuple(spec.secrets.values())),
            metrics=self.metrics,
        )
        await logs.start()
        try:
            if withheld is not None:
                logs.notice(withheld)
            if secrets_error is not None:
                logs.notice(secrets_error)
                raise _SecretsUnavailable(secrets_error)
            runner = WorkflowRunner(
                backend=self.backend,
                logs=logs,
                cancel=active.cancel,
                settings=self.settings,
                scratch=self.settings.data_dir / "runs" / f"{spec.run_id}-{self.instance_id}",
                job_slots=self.job_slots,
                actions=self.actions,
                metrics=self.metrics,
            )
            outcome = await runner.run(spec)
        except _SecretsUnavailable as exc:
            outcome = RunOutcome(Status.FAILED, str(exc))
        except Exception as exc:
            log.exception("run %d failed inside the spindle", spec.run_id)
            logs.notice(f"internal error: {type(exc).__name__}; the run is stopped")
            outcome = RunOutcome(
                Status.FAILED, f"the spindle failed while running this run ({type(exc).__name__})"
            )
        if active.shutdown and outcome.status is Status.CANCELLED:
            logs.notice(SHUTDOWN_ERROR)
            outcome = RunOutcome(Status.FAILED, SHUTDOWN_ERROR)
        try:
            # The log is complete in the database before watchers learn the run has finished.
            await logs.close()
            if outcome.status is Status.SUCCESS and outcome.exit_code is None:
                outcome.exit_code = 0
            await self._record_end(spec.run_id, outcome)
        except Exception:
            log.exception("could not record the end of run %d", spec.run_id)
        finally:
            self.active.pop(spec.run_id, None)
            self._loop.event.set()  # a slot is free

    async def _record_end(self, run_id: int, outcome: RunOutcome) -> None:
        """`_finish`, retried while the database is away: a run of ours left `running` would stay so
        until a restart (the stale sweep skips this instance's runs, and heartbeats keep others off)."""
        delay = FINISH_RETRY_START
        while True:
            try:
                await self._finish(run_id, outcome, owner=self.instance_id)
                return
            except Exception as exc:
                if self._loop.stopping:
                    raise  # the next start fails it with RESTART_ERROR
                log.warning("could not record the end of run %d (%r); retrying in %g s", run_id, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, FINISH_RETRY_MAX)

    async def _finish(
        self, run_id: int, outcome: RunOutcome, *, owner: str | None, stale_before: Any = None
    ) -> bool:
        """running → a final status, only if `owner` still holds the run (and, for a stale sweep,
        its heartbeat is still old): whoever loses a race leaves the row alone."""
        async with self.sessionmaker() as session:
            conditions = [WorkflowRun.id == run_id, WorkflowRun.status == Status.RUNNING]
            conditions.append(
                WorkflowRun.claimed_by.is_(None) if owner is None else WorkflowRun.claimed_by == owner
            )
            if stale_before is not None:
                conditions.append(
                    or_(WorkflowRun.heartbeat_at.is_(None), WorkflowRun.heartbeat_at < stale_before)
                )
            done = await session.execute(
                update(WorkflowRun)
                .where(*conditions)
                .values(status=outcome.status)
                .execution_options(synchronize_session=False)
            )
            run = await self._commit_transition(
                session, done, run_id, outcome.status, error=outcome.error, exit_code=outcome.exit_code
            )
            return run is not None

    async def _commit_transition(
        self,
        session: AsyncSession,
        changed: Result[Any],
        run_id: int,
        status: Status,
        *,
        error: str | None = None,
        exit_code: int | None = None,
    ) -> WorkflowRun | None:
        """After a conditional UPDATE that moved the run to `status`: append its event, commit and
        announce it; None (rolled back) when the UPDATE matched nothing, another process was first."""
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            await session.rollback()
            return None
        run = await session.get(WorkflowRun, run_id, populate_existing=True)
        assert run is not None
        event = transition(session, run, status, error=error, exit_code=exit_code)
        await session.commit()
        announce(self.broker, run, event)
        if status.is_finished:
            self.metrics.run_finished(status, seconds_between(run.started_at, run.finished_at))
        return run
