"""The database goes away under a running service and comes back: 503 meanwhile, then work resumes.

The service runs on a PostgreSQL server of the test's own (tests/support/pgserver.py), stopped
with an immediate shutdown (what a crash or a network cut looks like to clients) and started
again on the same port. No restart of the service in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from app.engine.container.backend import deployment_id
from app.runs.models import Pipeline
from tests.hostile.conftest import assert_xrpc_error
from tests.runs.conftest import CI_YML, Identity, KnotRepo, serve
from tests.support.knot import TestKnot
from tests.support.pgserver import PgServer
from tests.support.podman import touch_in_jobs
from tests.support.servers import free_port

# What a 503 must not show: the driver, the library, the address of the database.
INTERNALS = ("asyncpg", "sqlalchemy", "psycopg", "127.0.0.1", "connection refused", "Traceback", "SELECT")


@pytest.fixture
def pg() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


@pytest.fixture
def pg_url(pg: PgServer) -> str:
    return pg.database()  # migrated here, outside the event loop


def assert_unavailable(response, what: str) -> None:
    body = assert_xrpc_error(response, 503, "ServiceUnavailable")
    for word in INTERNALS:
        assert word.lower() not in body["message"].lower(), (what, body)


async def test_a_database_outage_is_503_and_the_service_recovers_without_a_restart(
    pg: PgServer, pg_url: str, make_settings, knot: TestKnot, alice: Identity
):
    url = pg_url
    port = free_port()
    settings = make_settings(hostname=f"127.0.0.1:{port}", database_url=url, knot_timeout=5.0)
    git = knot.create_repo(alice.did, "hello")
    sha = git.commit({".github/workflows/ci.yml": CI_YML})
    async with serve(settings, port) as spindle:
        await spindle.register(knot=knot.host, did=alice.did, name="hello")
        repo = KnotRepo(knot, git, sha, alice)
        first = repo.body()
        assert (await spindle.trigger(first, by=alice)).status_code == 200
        status_path = f"/status/{first['knot']}/{first['pipelineRkey']}/ci"
        await spindle.engine.dispose()  # the test's own connections; the service keeps its pool

        pg.stop()
        during = repo.body()
        outage = [
            ("trigger", await spindle.trigger(during, by=alice)),
            ("healthz", await spindle.client.get("/healthz")),
            ("status", await spindle.client.get(status_path)),
        ]
        pg.start()
        after = repo.body()
        recovered = await spindle.trigger(after, by=alice)
        status = await spindle.client.get(status_path)
        health = await spindle.client.get("/healthz")

        for what, response in outage:
            assert_unavailable(response, what)
        assert recovered.status_code == 200, recovered.text
        assert status.status_code == 200, status.text
        assert health.status_code == 200, health.text
        rkeys = {p.rkey for p in await spindle.pipelines()}
        assert rkeys == {first["pipelineRkey"], after["pipelineRkey"]}
        assert await spindle.count(Pipeline) == 2


# The step ends when the test says so (a file in its workspace), not after a while: it ends during
# the outage however long stopping the database takes.
HELD = """\
on: workflow_dispatch
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: |
          echo step-started
          until [ -e "$GITHUB_WORKSPACE/go" ]; do sleep 0.05; done
          echo step-finished
"""
WAIT_SECONDS = 90.0  # a safety net against hangs, not a timing assertion


async def wait_until(what: str, check) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_run_that_ends_during_an_outage_is_recorded_once_the_database_is_back(
    pg: PgServer, pg_url: str, make_settings, knot: TestKnot, alice: Identity
):
    port = free_port()
    settings = make_settings(hostname=f"127.0.0.1:{port}", database_url=pg_url)
    git = knot.create_repo(alice.did, "sleepy")
    sha = git.commit({".github/workflows/ci.yml": HELD})
    async with serve(settings, port) as spindle:
        await spindle.register(knot=knot.host, did=alice.did, name="sleepy")
        scheduler = spindle.ctx.scheduler
        finish_attempts: list[int] = []
        original_finish = scheduler._finish

        async def spy_finish(run_id, outcome, **kwargs):
            finish_attempts.append(run_id)
            return await original_finish(run_id, outcome, **kwargs)

        scheduler._finish = spy_finish  # type: ignore[method-assign]
        body = KnotRepo(knot, git, sha, alice).body()
        answer = await spindle.trigger(body, by=alice)
        assert answer.status_code == 200, answer.text
        workflow = answer.json()["workflows"][0]
        logs_path = workflow["logsUrl"].split(str(port), 1)[1]
        status_path = workflow["statusUrl"].split(str(port), 1)[1]

        async def started() -> bool:
            return "step-started" in (await spindle.client.get(logs_path)).text

        await wait_until("the step to start", started)
        [run_id] = list(scheduler.active)
        await spindle.engine.dispose()
        pg.stop()
        assert settings.docker_host is not None
        assert (
            await touch_in_jobs(
                settings.docker_host, run_id, "/__w/sleepy/sleepy/go", deployment=deployment_id(settings)
            )
            == 1
        )

        async def tried_to_record_the_end() -> bool:
            return bool(finish_attempts)

        await wait_until("the run to end while the database is down", tried_to_record_the_end)
        pg.start()

        async def finished() -> bool:
            response = await spindle.client.get(status_path)
            return response.status_code == 200 and response.json()["status"] not in ("pending", "running")

        await wait_until("the end of the run to be recorded", finished)
        status = (await spindle.client.get(status_path)).json()

    assert status["status"] == "success", status
    assert [e["status"] for e in status["events"]] == ["pending", "running", "success"]
