"""/metrics after real triggers: a run through the real engine, refused triggers, a watcher, knot lag."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from websockets.asyncio.client import connect

from app.database import create_engine, create_sessionmaker
from app.knot.models import KnotCursor
from app.metrics import Metrics
from app.runs.models import Status, WorkflowRun
from tests.runs.conftest import Identity, Spindle
from tests.runs.test_retention import add_pipeline
from tests.support.knot import TestKnot

HELLO = """\
on: workflow_dispatch
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - run: echo hello from a metered run
"""
NAMES = (
    "spindle_triggers_total",
    "spindle_runs_finished_total",
    "spindle_run_duration_seconds",
    "spindle_job_duration_seconds",
    "spindle_log_bytes_total",
    "spindle_log_stored_bytes",
    "spindle_watchers",
    "spindle_queue_depth",
    "spindle_runs_running",
    "spindle_knot_event_lag_seconds",
    "spindle_jetstream_lag_seconds",
    "spindle_did_cache_requests_total",
    "spindle_retention_deleted_rows_total",
    "spindle_retention_last_sweep_timestamp_seconds",
)


async def scrape(spindle: Spindle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    response = await spindle.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_after_a_run_through_the_trigger(
    spindle: Spindle, knot: TestKnot, alice: Identity
) -> None:
    git = knot.create_repo(alice.did, "metered")
    sha = git.commit({".github/workflows/ci.yml": HELLO})
    await spindle.register(knot=knot.host, did=alice.did, name="metered")
    body = {
        "knot": knot.host,
        "pipelineRkey": "3lmetered0001",
        "actor": alice.did,
        "repoDid": alice.did,
        "repoName": "metered",
        "ref": sha,
    }
    async with spindle.sessions() as session:
        session.add(KnotCursor(knot="knot.example", cursor=time.time_ns() - 120 * 10**9))
        await session.commit()

    assert (await spindle.trigger({**body, "ref": "main"}, by=alice)).json()["error"] == "InvalidRequest"
    assert (await spindle.trigger(body)).json()["error"] == "AuthenticationRequired"
    accepted = await spindle.trigger(body, by=alice)
    assert accepted.status_code == 200, accepted.text
    (workflow,) = accepted.json()["workflows"]
    async with connect(workflow["logsUrl"]) as logs:
        watching = await scrape(spindle)
        lines = [json.loads(frame) async for frame in logs]  # until the run has finished
    spindle.ctx.metrics.observe_jetstream_event(int((time.time() - 30) * 1_000_000))
    samples = await scrape(spindle)

    assert {name for name, _ in samples} >= {
        name + suffix
        for name in NAMES
        for suffix in (("_count", "_sum", "_bucket") if name.endswith("duration_seconds") else ("",))
    }
    assert any(line["content"] == "hello from a metered run" for line in lines)
    assert value(watching, "spindle_watchers", stream="logs") == 1
    assert value(samples, "spindle_watchers", stream="logs") == 0
    assert value(samples, "spindle_triggers_total", result="accepted") == 1
    assert value(samples, "spindle_triggers_total", result="InvalidRequest") == 1
    assert value(samples, "spindle_triggers_total", result="AuthenticationRequired") == 1
    assert value(samples, "spindle_runs_finished_total", status="success") == 1
    assert value(samples, "spindle_run_duration_seconds_count", status="success") == 1
    assert value(samples, "spindle_run_duration_seconds_sum", status="success") > 0
    assert value(samples, "spindle_job_duration_seconds_count", result="success") == 1
    assert value(samples, "spindle_queue_depth") == 0
    assert value(samples, "spindle_runs_running") == 0
    async with spindle.sessions() as session:
        stored = await session.scalar(select(func.sum(WorkflowRun.log_bytes)))
    assert stored == sum(
        len(line["content"].encode()) + len((line["step_command"] or "").encode()) for line in lines
    )
    assert value(samples, "spindle_log_bytes_total") == stored
    assert value(samples, "spindle_log_stored_bytes") == stored
    # The first token of alice fetched her DID document; the second was answered from the cache.
    assert value(samples, "spindle_did_cache_requests_total", result="miss") == 1
    assert value(samples, "spindle_did_cache_requests_total", result="hit") == 1
    assert 120 <= value(samples, "spindle_knot_event_lag_seconds", knot="knot.example") < 3600
    assert 30 <= value(samples, "spindle_jetstream_lag_seconds") < 3600


async def test_queue_depth_and_running_runs_are_read_from_the_database(database_url: str) -> None:
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    try:
        await add_pipeline(sessions, age_days=0, statuses=(Status.PENDING, Status.PENDING, Status.RUNNING))
        await add_pipeline(sessions, age_days=1, statuses=(Status.SUCCESS, Status.FAILED), line_bytes=100)
        metrics = Metrics()
        await metrics.refresh(sessions)
    finally:
        await engine.dispose()

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    assert value(samples, "spindle_queue_depth") == 2
    assert value(samples, "spindle_runs_running") == 1
    assert value(samples, "spindle_log_stored_bytes") == 3 * 10 * 3 + 2 * 3 * 100
