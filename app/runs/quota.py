"""Quotas on starting runs: how often an actor and a repo may start runs, and how many may wait.

    quota = RunQuota(settings=settings, sessionmaker=sessionmaker)
    await quota.admit(knot=, repo_did=, repo_name=, actor=, runs=3)   # or raises RateLimitExceeded

Every way a run starts goes through `RunStarter.start` (app.runs.flows), which calls `admit`
before recording a new pipeline: the manual trigger, a knot's pipeline event, Tangled's
triggerPipeline. A refused trigger is answered 429 `RateLimitExceeded` with `Retry-After`; a
refused knot event is logged and nothing is recorded (a knot does not wait for an answer).

- Rates: token buckets per actor (when the start has one) and per repo, in this process
  (`SPINDLE_ACTOR_RUNS_PER_MINUTE`, `SPINDLE_REPO_RUNS_PER_MINUTE`). A pipeline of n workflow
  runs takes one token: the limit is on triggers, and the queue cap bounds what they add.
- Queue: the runs of the repo still `pending`, counted in the database, so the cap holds across
  processes sharing it (`SPINDLE_MAX_QUEUED_RUNS_PER_REPO`).
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.metrics import Metrics
from app.ratelimit import TokenBuckets
from app.runs.models import Pipeline, Status, WorkflowRun
from app.xrpc.errors import RateLimitExceeded

log = logging.getLogger(__name__)

# What a client is told to wait when the repo's queue is full: about what a short job takes.
QUEUE_FULL_RETRY_AFTER = 60.0


class RunQuota:
    """The rate and queue limits on new runs; one per process."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        metrics: Metrics | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.metrics = metrics
        self.max_queued = settings.max_queued_runs_per_repo
        self.actors = TokenBuckets(per_minute=settings.actor_runs_per_minute)
        self.repos = TokenBuckets(per_minute=settings.repo_runs_per_minute)

    async def admit(self, *, knot: str, repo_did: str, repo_name: str, actor: str | None, runs: int) -> None:
        """Take one start for `actor` and the repo, or raise RateLimitExceeded (nothing taken).

        Concurrent starts of one repo may each count the queue before the others are recorded, so
        the queue cap can be passed by as many pipelines as arrive at that moment (at most the
        repo's burst)."""
        repo = (knot, repo_did, repo_name)
        # Taken before the queue is counted (and given back if it is full): requests waiting on
        # that count together cannot take more than the bucket holds.
        actor_wait = self.actors.take(actor) if actor is not None else 0.0
        if actor_wait > 0:
            self._refused("actor_rate")
            raise RateLimitExceeded(
                f"{actor} started too many runs (at most {self.actors.burst:g} a minute); "
                f"try again in {actor_wait:.0f} s",
                retry_after=actor_wait,
            )
        repo_wait = self.repos.take(repo)
        if repo_wait > 0:
            self._give_back(actor, None)
            self._refused("repo_rate")
            raise RateLimitExceeded(
                f"repo {repo_did}/{repo_name} on {knot} started too many runs "
                f"(at most {self.repos.burst:g} a minute); try again in {repo_wait:.0f} s",
                retry_after=repo_wait,
            )
        if self.max_queued:
            try:
                waiting = await self.queued(knot=knot, repo_did=repo_did, repo_name=repo_name)
            except BaseException:
                self._give_back(actor, repo)
                raise
            # A pipeline larger than the cap still starts on an empty queue.
            if waiting and waiting + runs > self.max_queued:
                self._give_back(actor, repo)
                self._refused("queued_runs")
                raise RateLimitExceeded(
                    f"repo {repo_did}/{repo_name} on {knot} has {waiting} runs waiting to start and "
                    f"{runs} more would pass the limit of {self.max_queued}; "
                    "try again when some have started",
                    retry_after=QUEUE_FULL_RETRY_AFTER,
                )

    def _refused(self, limit: str) -> None:
        if self.metrics is not None:
            self.metrics.refusal(limit)

    def _give_back(self, actor: str | None, repo: tuple[str, str, str] | None) -> None:
        if actor is not None:
            self.actors.give_back(actor)
        if repo is not None:
            self.repos.give_back(repo)

    async def queued(self, *, knot: str, repo_did: str, repo_name: str) -> int:
        """Runs of the repo still pending, in every process (read through the status index)."""
        async with self.sessionmaker() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(WorkflowRun)
                .join(Pipeline, WorkflowRun.pipeline_id == Pipeline.id)
                .where(
                    WorkflowRun.status == Status.PENDING,
                    Pipeline.knot == knot,
                    Pipeline.repo_did == repo_did,
                    Pipeline.repo_name == repo_name,
                )
            )
        return int(count or 0)
