"""The durable queue: claiming, concurrency, cancel, restart recovery, heartbeats, published logs."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aiodocker

from app.database import utcnow
from app.engine.container.backend import LABEL_DEPLOYMENT, LABEL_RUN, deployment_id
from app.engine.queue import CANCELLED_PENDING, RESTART_ERROR, SHUTDOWN_ERROR, next_runs, take_turn
from app.runs.models import Status
from app.streams.broker import EVENTS_TOPIC, logs_topic
from tests.engine.conftest import REPO_DID, Harness
from tests.support.podman import PodmanEngine, touch_in_jobs

SLEEPER = """
on: workflow_dispatch
jobs:
  a:
    steps:
      - run: echo started; sleep 600
      - run: echo after
"""

ECHO = """
on: workflow_dispatch
jobs:
  a:
    steps:
      - run: echo "run ${{ github.run_id }} done"
"""


RELEASE = "/__w/_temp/release"
# A workflow that waits until the test creates RELEASE in its container (touch_in_jobs).
GATED = f"""
on: workflow_dispatch
jobs:
  a:
    steps:
      - run: echo waiting; while [ ! -e {RELEASE} ]; do sleep 0.05; done; echo released
"""


async def test_cancel_of_a_running_run_kills_its_step_and_ends_cancelled(harness: Harness) -> None:
    scheduler = await harness.started()
    run_id = await harness.add_run(SLEEPER)
    await harness.wait_output(run_id, "started")
    assert await scheduler.cancel(run_id) is Status.RUNNING
    run = await harness.wait(run_id)
    assert (run.status, run.error, run.cancel_requested) == (Status.CANCELLED, "the run was cancelled", True)
    output = await harness.output(run_id)
    assert "Error: the step was cancelled" in output and "after" not in output
    assert [e.status for e in await harness.events(run_id)] == [
        Status.PENDING,
        Status.RUNNING,
        Status.CANCELLED,
    ]
    assert not scheduler.active


async def test_cancel_of_a_queued_run_ends_it_without_running(harness: Harness) -> None:
    scheduler = await harness.started(max_jobs=1)
    busy = await harness.add_run(SLEEPER)
    await harness.wait_output(busy, "started")
    queued = await harness.add_run(ECHO)
    assert await scheduler.cancel(queued) is Status.CANCELLED
    run = await harness.get(queued)
    assert (run.status, run.error, run.started_at) == (Status.CANCELLED, CANCELLED_PENDING, None)
    assert [e.status for e in await harness.events(queued)] == [Status.PENDING, Status.CANCELLED]
    await scheduler.cancel(busy)
    assert (await harness.wait(busy)).status is Status.CANCELLED
    assert await harness.lines(queued) == []
    assert await scheduler.cancel(queued) is Status.CANCELLED  # cancelling twice changes nothing
    assert await scheduler.cancel(10_000) is None


async def test_cancel_from_another_process_reaches_the_run_through_the_database(
    any_db_harness: Harness,
) -> None:
    harness = any_db_harness
    owner = await harness.started(instance_id="owner", poll_interval=0.1)
    other = harness.scheduler(instance_id="other")  # not started: a process that only serves routes
    run_id = await harness.add_run(SLEEPER)
    await harness.wait_output(run_id, "started")
    assert run_id in owner.active and run_id not in other.active
    assert await other.cancel(run_id) is Status.RUNNING
    run = await harness.wait(run_id)
    assert (run.status, run.claimed_by) == (Status.CANCELLED, "owner")


async def test_restart_fails_the_runs_this_instance_left_running_and_runs_pending_ones(
    any_db_harness: Harness,
) -> None:
    harness = any_db_harness
    crashed = await harness.add_run(
        SLEEPER, status=Status.RUNNING, claimed_by="spindle-1", heartbeat_at=utcnow()
    )
    queued = await harness.add_run(ECHO)
    await harness.started(instance_id="spindle-1")
    run = await harness.get(crashed)
    assert (run.status, run.error) == (Status.FAILED, RESTART_ERROR)
    assert [e.status for e in await harness.events(crashed)] == [
        Status.PENDING,
        Status.RUNNING,
        Status.FAILED,
    ]
    done = await harness.wait(queued)
    assert (done.status, done.claimed_by) == (Status.SUCCESS, "spindle-1")
    assert f"run {queued} done" in await harness.output(queued)


async def test_runs_of_another_instance_fail_only_when_its_heartbeat_is_stale(
    any_db_harness: Harness,
) -> None:
    harness = any_db_harness
    stale = await harness.add_run(
        SLEEPER, status=Status.RUNNING, claimed_by="dead-host", heartbeat_at=utcnow() - timedelta(minutes=5)
    )
    alive = await harness.add_run(
        SLEEPER, status=Status.RUNNING, claimed_by="live-host", heartbeat_at=utcnow()
    )
    scheduler = await harness.started(instance_id="me")
    run = await harness.wait(stale)
    assert run.status is Status.FAILED
    assert run.error == "the spindle running this run (dead-host) stopped sending heartbeats for over 60 s"
    assert (await harness.get(alive)).status is Status.RUNNING
    assert not scheduler.active  # neither run was taken over


async def test_at_most_max_jobs_runs_execute_at_once_and_the_rest_wait_their_turn(
    harness: Harness, podman_engine: PodmanEngine
) -> None:
    ids = [await harness.add_run(GATED) for _ in range(3)]
    deployment = deployment_id(harness.settings())
    with harness.broker.subscribe(EVENTS_TOPIC) as events:
        scheduler = await harness.started(max_jobs=2)
        await harness.wait_output(ids[0], "waiting")
        await harness.wait_output(ids[1], "waiting")
        await scheduler._tick()  # a claim attempt now must find no free slot
        assert sorted(scheduler.active) == ids[:2]
        assert (await harness.get(ids[2])).status is Status.PENDING
        for run_id in ids[:2]:
            assert await touch_in_jobs(podman_engine.url, run_id, RELEASE, deployment=deployment) == 1
        await harness.wait_output(ids[2], "waiting")
        assert await touch_in_jobs(podman_engine.url, ids[2], RELEASE, deployment=deployment) == 1
        for run_id in ids:
            assert (await harness.wait(run_id)).status is Status.SUCCESS
        transitions = [(e["workflowRunId"], e["status"]) for e in events.drain()]
    running: set[int] = set()
    most = 0
    for run_id, status in transitions:
        if status == "running":
            running.add(run_id)
        elif status in ("success", "failed", "cancelled", "timeout"):
            running.discard(run_id)
        most = max(most, len(running))
    assert most == 2
    third_started = transitions.index((ids[2], "running"))
    assert any(status == "success" for _, status in transitions[:third_started])


async def test_two_schedulers_sharing_a_database_never_run_a_run_twice(any_db_harness: Harness) -> None:
    harness = any_db_harness
    ids = [await harness.add_run(ECHO) for _ in range(6)]
    first = harness.scheduler(instance_id="first", poll_interval=0.05)
    second = harness.scheduler(instance_id="second", poll_interval=0.05)
    await asyncio.gather(first.start(), second.start())
    owners = []
    for run_id in ids:
        run = await harness.wait(run_id)
        assert run.status is Status.SUCCESS
        owners.append(run.claimed_by)
        statuses = [e.status for e in await harness.events(run_id)]
        assert statuses == [Status.PENDING, Status.RUNNING, Status.SUCCESS]
        assert (await harness.output(run_id)).count(f"run {run_id} done") == 1
    assert set(owners) <= {"first", "second"}


async def test_two_claims_racing_for_one_run_give_it_to_exactly_one(any_db_harness: Harness) -> None:
    harness = any_db_harness
    run_id = await harness.add_run(ECHO)
    first, second = harness.scheduler(instance_id="first"), harness.scheduler(instance_id="second")
    specs = await asyncio.gather(first._try_claim(run_id), second._try_claim(run_id))
    winners = [spec for spec in specs if spec is not None]
    assert len(winners) == 1 and winners[0].run_id == run_id
    assert [e.status for e in await harness.events(run_id)] == [Status.PENDING, Status.RUNNING]


async def test_stop_kills_running_runs_and_records_why_they_failed(harness: Harness) -> None:
    scheduler = await harness.started()
    run_id = await harness.add_run(SLEEPER)
    await harness.wait_output(run_id, "started")
    await scheduler.stop()
    run = await harness.get(run_id)
    assert (run.status, run.error) == (Status.FAILED, SHUTDOWN_ERROR)
    assert not (harness.tmp_path / "data" / "work" / str(run_id)).exists()


async def test_log_lines_are_stored_then_published_as_batches_with_their_row_ids(
    any_db_harness: Harness,
) -> None:
    harness = any_db_harness
    run_id = await harness.add_run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: for i in $(seq 1 500); do echo "line $i"; done
        """
    )
    batches: list[list[dict[str, Any]]] = []
    with harness.broker.subscribe(logs_topic(run_id)) as logs:
        await harness.started()
        await harness.wait(run_id)
        batches = logs.drain()
    published = [line for batch in batches for line in batch]
    stored = await harness.lines(run_id)
    assert [(p["id"], p["content"]) for p in published] == [(row.id, row.content) for row in stored]
    assert max(len(batch) for batch in batches) <= 200
    assert set(published[0]) == {
        "id",
        "kind",
        "content",
        "time",
        "step_id",
        "stream",
        "step_status",
        "step_command",
        "step_kind",
    }
    data = [p["content"] for p in published if p["kind"] == "data" and p["step_id"] == 0]
    assert data == [f"line {i}" for i in range(1, 501)]
    assert published[-1]["time"].endswith("Z")


async def test_a_finished_run_leaves_no_container_network_or_scratch_behind(
    harness: Harness, podman_engine: PodmanEngine
) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            services:
              side: {image: IMAGE, options: --entrypoint sleep}
            steps:
              - run: touch "$GITHUB_WORKSPACE/file"; (setsid sleep 1000 &)
          b:
            steps:
              - run: echo second job
        """.replace("IMAGE", podman_engine.image)
    )
    assert run.status is Status.SUCCESS, run.error
    async with aiodocker.Docker(url=podman_engine.url) as docker:
        deployment = deployment_id(harness.settings())
        label = [f"{LABEL_RUN}={run.id}", f"{LABEL_DEPLOYMENT}={deployment}"]
        assert await docker.containers.list(all=True, filters={"label": label}) == []
        assert await docker.networks.list(filters={"label": label}) == []
    assert not list((harness.tmp_path / "data" / "runs").glob(f"{run.id}-*"))


async def test_independent_jobs_of_a_run_run_at_the_same_time(
    harness: Harness, podman_engine: PodmanEngine
) -> None:
    # Both jobs wait for RELEASE in their own container: the test releases them only once both
    # have said "waiting", which they can do only if they run at the same time.
    run_id = await harness.add_run(
        f"""
        on: workflow_dispatch
        jobs:
          first:
            steps:
              - run: echo waiting-first; while [ ! -e {RELEASE} ]; do sleep 0.05; done
          second:
            steps:
              - run: echo waiting-second; while [ ! -e {RELEASE} ]; do sleep 0.05; done
          after:
            needs: [first, second]
            steps:
              - run: echo after-both
        """
    )
    await harness.started(max_jobs=2)
    await harness.wait_output(run_id, "waiting-first")
    await harness.wait_output(run_id, "waiting-second")
    output = await harness.output(run_id)
    assert "after-both" not in output
    deployment = deployment_id(harness.settings())
    assert await touch_in_jobs(podman_engine.url, run_id, RELEASE, deployment=deployment) == 2
    run = await harness.wait(run_id)
    assert run.status is Status.SUCCESS, run.error
    assert "after-both" in await harness.output(run_id)


async def test_next_runs_take_the_oldest_run_of_each_repo_before_a_second_of_any(
    any_db_harness: Harness,
) -> None:
    harness = any_db_harness
    flood = [await harness.add_run(ECHO, repo_name="flood") for _ in range(5)]
    honest = await harness.add_run(ECHO, repo_name="honest")
    async with harness.sessionmaker() as session:
        assert await next_runs(session, limit=10) == [flood[0], honest]


async def test_next_runs_put_a_repo_with_nothing_running_before_one_already_running(
    any_db_harness: Harness,
) -> None:
    harness = any_db_harness
    await harness.add_run(ECHO, repo_name="flood", status=Status.RUNNING, claimed_by="elsewhere")
    flood = [await harness.add_run(ECHO, repo_name="flood") for _ in range(3)]
    honest = await harness.add_run(ECHO, repo_name="honest")
    async with harness.sessionmaker() as session:
        assert await next_runs(session, limit=10) == [honest, flood[0]]


async def test_next_runs_put_a_repo_never_served_before_one_served_just_now(any_db_harness: Harness) -> None:
    harness = any_db_harness
    flood = [await harness.add_run(ECHO, repo_name="flood") for _ in range(3)]
    honest = await harness.add_run(ECHO, repo_name="honest")
    async with harness.sessionmaker() as session:
        await take_turn(session, knot="knot.example.com", repo_did=REPO_DID, repo_name="flood")
    async with harness.sessionmaker() as session:
        assert await next_runs(session, limit=10) == [honest, flood[0]]
    async with harness.sessionmaker() as session:
        await take_turn(session, knot="knot.example.com", repo_did=REPO_DID, repo_name="honest")
    async with harness.sessionmaker() as session:
        assert await next_runs(session, limit=10) == [flood[0], honest]


async def test_a_flooding_repo_does_not_starve_the_run_of_another_repo(
    harness: Harness, podman_engine: PodmanEngine
) -> None:
    flood = [await harness.add_run(GATED, repo_name="flood") for _ in range(4)]
    honest = await harness.add_run(ECHO, repo_name="honest")
    deployment = deployment_id(harness.settings())
    # One slot: the first flood run takes it; when it ends, the other repo's run is next.
    await harness.started(max_jobs=1, poll_interval=0.05)
    await harness.wait_output(flood[0], "waiting")
    assert await touch_in_jobs(podman_engine.url, flood[0], RELEASE, deployment=deployment) == 1
    assert (await harness.wait(honest)).status is Status.SUCCESS
    honest_started = next(e.id for e in await harness.events(honest) if e.status is Status.RUNNING)
    for run_id in flood[1:]:
        started = [e.id for e in await harness.events(run_id) if e.status is Status.RUNNING]
        assert all(event_id > honest_started for event_id in started)
