"""What an operator scrapes: one Prometheus registry per app, served as text at `/metrics`.

    metrics = Metrics()                            # built by AppContext, handed to what counts
    metrics.trigger_result("accepted")             # or the XRPC error name
    metrics.run_finished(status, seconds)          # the scheduler, when a run of ours ends
    metrics.job_finished(result, seconds)          # the runner, when a job's container is gone
    metrics.log_bytes_stored(n)                    # a run's log sink, after each commit
    with metrics.watching("logs"): ...             # a WebSocket or SSE client is connected
    metrics.observe_jetstream_event(time_us)       # the Jetstream consumer, per event it handled
    metrics.refusal("actor_rate")                  # a limit refused a run or a stream
    await metrics.refresh(sessionmaker, ...)       # at scrape time: what only the database knows
    metrics.render()                               # the text format

Counters and histograms count what this process did (Prometheus sums processes); the gauges read
from the database at scrape time (queue depth, running runs, stored log bytes, knot lag) describe
the deployment, so every process reports the same values: aggregate them with `max`, not `sum`.
A registry of its own per app, not prometheus-client's global one, so that tests and processes
that build several apps never register a name twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import utcnow
from app.knot.models import KnotCursor
from app.runs.models import Status, WorkflowRun

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Runs take seconds to hours; jobs the same.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, float("inf"))
WATCHED_STREAMS = ("logs", "status", "events")
REFUSAL_LIMITS = ("actor_rate", "repo_rate", "queued_runs", "watchers_per_address", "watchers_total")
RETAINED_TABLES = ("pipeline", "workflow_run", "status_event", "log_line")


class CacheCounts(Protocol):
    """What a cache reports: hits and misses so far (read at scrape time)."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...


class _CacheCollector(Collector):
    """spindle_did_cache_requests_total{result}, read from the resolver's own counts at scrape time:
    the resolver keeps two integers and knows nothing of Prometheus."""

    def __init__(self, source: Callable[[], CacheCounts | None]) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "spindle_did_cache_requests",
            "DID document lookups, answered from the cache (hit) or fetched (miss).",
            labels=["result"],
        )
        counts = self.source()
        family.add_metric(["hit"], counts.hits if counts else 0)
        family.add_metric(["miss"], counts.misses if counts else 0)
        yield family

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.triggers = Counter(
            "spindle_triggers",
            "Manual triggers answered, by result: accepted, or the XRPC error name.",
            ["result"],
            registry=r,
        )
        self.runs_finished = Counter(
            "spindle_runs_finished", "Workflow runs this process finished, by status.", ["status"], registry=r
        )
        self.run_duration = Histogram(
            "spindle_run_duration_seconds",
            "Workflow runs from claimed to finished (runs this process ran), by final status.",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.job_duration = Histogram(
            "spindle_job_duration_seconds",
            "Jobs from container set-up to clean-up, by result (success, failure, cancelled).",
            ["result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.log_bytes = Counter(
            "spindle_log_bytes", "Bytes of run log lines this process stored.", registry=r
        )
        self.watchers = Gauge(
            "spindle_watchers",
            "Clients connected to this process's streams (WebSocket or Server-Sent Events), by stream.",
            ["stream"],
            registry=r,
        )
        for stream in WATCHED_STREAMS:
            self.watchers.labels(stream)  # shown at 0 before anyone connects
        self.queue_depth = Gauge(
            "spindle_queue_depth", "Workflow runs waiting to be claimed (pending), all processes.", registry=r
        )
        self.runs_running = Gauge(
            "spindle_runs_running", "Workflow runs running, in the database (all processes).", registry=r
        )
        self.log_stored_bytes = Gauge(
            "spindle_log_stored_bytes",
            "Bytes of run log lines kept in the database (what SPINDLE_RETENTION_LOG_MB caps).",
            registry=r,
        )
        self.knot_lag = Gauge(
            "spindle_knot_event_lag_seconds",
            "Now minus the time of the last event read from each knot's /events stream.",
            ["knot"],
            registry=r,
        )
        self.jetstream_lag = Gauge(
            "spindle_jetstream_lag_seconds",
            "Now minus the time_us of the last Jetstream event handled.",
            registry=r,
        )
        self.refused = Counter(
            "spindle_refused",
            "Runs and streams refused by a limit (docs/limits.md), by limit: actor_rate, repo_rate, "
            "queued_runs, watchers_per_address, watchers_total.",
            ["limit"],
            registry=r,
        )
        for limit in REFUSAL_LIMITS:
            self.refused.labels(limit)  # shown at 0 before anything is refused
        self.retention_deleted = Counter(
            "spindle_retention_deleted_rows",
            "Rows the retention sweep of this process deleted, by table.",
            ["table"],
            registry=r,
        )
        for table in RETAINED_TABLES:
            self.retention_deleted.labels(table)
        self.retention_last_sweep = Gauge(
            "spindle_retention_last_sweep_timestamp_seconds",
            "When this process last completed a retention sweep (Unix time; 0: never).",
            registry=r,
        )
        self.retention_sweep_duration = Gauge(
            "spindle_retention_sweep_duration_seconds", "How long the last retention sweep took.", registry=r
        )
        self._did_cache: Callable[[], CacheCounts | None] = lambda: None
        r.register(_CacheCollector(lambda: self._did_cache()))

    # -- what the code paths call ------------------------------------------------------------

    def trigger_result(self, result: str) -> None:
        self.triggers.labels(result).inc()

    def run_finished(self, status: Status, seconds: float | None) -> None:
        self.runs_finished.labels(status.value).inc()
        if seconds is not None:
            self.run_duration.labels(status.value).observe(max(seconds, 0.0))

    def job_finished(self, result: str, seconds: float) -> None:
        self.job_duration.labels(result).observe(max(seconds, 0.0))

    def log_bytes_stored(self, count: int) -> None:
        self.log_bytes.inc(count)

    @contextmanager
    def watching(self, stream: str) -> Iterator[None]:
        """One connected client of `stream` (logs, status or events) while inside."""
        gauge = self.watchers.labels(stream)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def refusal(self, limit: str) -> None:
        """A run or stream refused by `limit` (one of REFUSAL_LIMITS)."""
        self.refused.labels(limit).inc()

    def observe_jetstream_event(self, time_us: int) -> None:
        """The Jetstream consumer's hook: call it with each handled event's `time_us`."""
        self.jetstream_lag.set(max(time.time() - time_us / 1_000_000, 0.0))

    def count_did_cache(self, source: Callable[[], CacheCounts | None]) -> None:
        """Where spindle_did_cache_requests_total reads its figures from (the DID resolver)."""
        self._did_cache = source

    def retention_swept(self, deleted: dict[str, int], seconds: float) -> None:
        for table, count in deleted.items():
            if count:
                self.retention_deleted.labels(table).inc(count)
        self.retention_sweep_duration.set(seconds)
        self.retention_last_sweep.set(time.time())

    # -- scrape time ---------------------------------------------------------------------------

    async def refresh(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        """Read the deployment-wide gauges from the database: two index counts, a sum over the
        runs (not their log lines) and the knot cursors; a scrape every few seconds costs little."""
        async with sessionmaker() as session:
            # Both counts use the index on workflow_run.status: neither reads finished runs.
            counts = dict(
                (
                    await session.execute(
                        select(WorkflowRun.status, func.count())
                        .where(WorkflowRun.status.in_([Status.PENDING, Status.RUNNING]))
                        .group_by(WorkflowRun.status)
                    )
                ).all()
            )
            stored = await session.scalar(select(func.coalesce(func.sum(WorkflowRun.log_bytes), 0)))
            cursors = (await session.execute(select(KnotCursor.knot, KnotCursor.cursor))).all()
        self.queue_depth.set(counts.get(Status.PENDING, 0))
        self.runs_running.set(counts.get(Status.RUNNING, 0))
        self.log_stored_bytes.set(int(stored or 0))
        self.knot_lag.clear()
        now_ns = time.time_ns()
        for knot, cursor in cursors:
            self.knot_lag.labels(knot).set(max(now_ns - int(cursor), 0) / 1e9)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def seconds_between(start: datetime | None, end: datetime | None = None) -> float | None:
    """`end - start` in seconds (end defaults to now); None when `start` is unknown."""
    if start is None:
        return None
    if start.tzinfo is None:  # SQLite hands back naive datetimes: they are UTC
        start = start.replace(tzinfo=utcnow().tzinfo)
    end = end or utcnow()
    if end.tzinfo is None:
        end = end.replace(tzinfo=utcnow().tzinfo)
    return (end - start).total_seconds()
