"""The database goes away under a running service and comes back: 503 meanwhile, then work resumes.

The service runs on a PostgreSQL server of the test's own (tests/support/pgserver.py), stopped
with an immediate shutdown (what a crash or a network cut looks like to clients) and started
again on the same port. No restart of the service in between.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.runs.models import Pipeline
from tests.hostile.conftest import assert_xrpc_error
from tests.runs.conftest import CI_YML, Identity, KnotRepo, serve
from tests.support.knot import TestKnot
from tests.support.pgserver import PgServer
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
