"""The trigger once the registration and the workflow files are cached: nothing read, one write."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from app.runs.models import Pipeline, Status, WorkflowRun
from tests.runs.conftest import Identity, KnotRepo, Spindle

DISPATCH_YML = """\
on:
  workflow_dispatch:
    inputs:
      target:
        type: choice
        options: [staging, production]
        required: true
jobs:
  deploy:
    if: false
    runs-on: ubuntu-latest
    steps:
      - run: echo deploying
"""


@contextmanager
def statements(spindle: Spindle) -> Iterator[list[str]]:
    """The SQL the service sends through its engine (the SQLite writer's own connection aside)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    sync_engine = spindle.ctx.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)


async def warm_up(spindle: Spindle, repo: KnotRepo) -> None:
    """One trigger caches the registration and the workflow files at the commit."""
    spindle.ctx.registrations.ttl = 3600  # no re-read of the registration during the test
    response = await spindle.trigger(repo.body(), by=repo.owner)
    assert response.status_code == 200, response.text


async def test_a_warm_trigger_reads_nothing_from_the_database(spindle: Spindle, repo: KnotRepo):
    await warm_up(spindle, repo)
    knot_requests = len(repo.knot.xrpc_requests())

    with statements(spindle) as seen:
        response = await spindle.trigger(repo.body(), by=repo.owner)

    assert response.status_code == 200, response.text
    # Neither the registration nor a pipeline under the record key (the engine, running beside,
    # reads its queue; on PostgreSQL the jti ledger is written).
    reads = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
    assert not [s for s in reads if re.search(r"\bFROM repo\b", s) or "pipeline.rkey" in s], reads
    assert len(repo.knot.xrpc_requests()) == knot_requests
    assert await spindle.count(Pipeline) == 2


async def test_concurrent_duplicates_on_the_warm_path_record_one_pipeline(spindle: Spindle, repo: KnotRepo):
    await warm_up(spindle, repo)
    body = repo.body()

    responses = await asyncio.gather(*(spindle.trigger(body, by=repo.owner) for _ in range(8)))

    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert all(r.json() == responses[0].json() for r in responses)
    assert await spindle.count(Pipeline) == 2
    assert await spindle.count(WorkflowRun) == 4
    pending = [e for e in await spindle.events() if e.status is Status.PENDING]
    assert len(pending) == 4
    assert spindle.wakes.count == 2


async def test_a_warm_retry_gets_the_stored_answer_and_a_changed_one_is_invalid(
    spindle: Spindle, repo: KnotRepo
):
    await warm_up(spindle, repo)
    body = repo.body()
    first = await spindle.trigger(body, by=repo.owner)

    again = await spindle.trigger(body, by=repo.owner)
    changed = await spindle.trigger({**body, "ref": repo.sha.upper(), "inputs": {"x": "1"}}, by=repo.owner)

    assert (again.status_code, again.json()) == (200, first.json())
    assert changed.status_code == 400
    assert "pipelineRkey" in changed.json()["message"]
    assert spindle.wakes.count == 2


async def test_a_reused_rkey_is_reported_as_such_even_when_the_new_inputs_are_refused(
    spindle: Spindle, knot, alice: Identity
):
    git = knot.create_repo(alice.did, "deploys")
    sha = git.commit({".github/workflows/deploy.yml": DISPATCH_YML})
    await spindle.register(knot=knot.host, did=alice.did, name="deploys")
    body = {
        "knot": knot.host,
        "pipelineRkey": "3kdeploy",
        "actor": alice.did,
        "repoDid": alice.did,
        "repoName": "deploys",
        "ref": sha,
        "inputs": {"target": "staging"},
    }
    assert (await spindle.trigger(body, by=alice)).status_code == 200

    response = await spindle.trigger({**body, "inputs": {"target": "the moon"}}, by=alice)

    assert response.status_code == 400
    assert "pipelineRkey 3kdeploy was already used" in response.json()["message"]
    fresh = await spindle.trigger(
        {**body, "pipelineRkey": "3kother", "inputs": {"target": "the moon"}}, by=alice
    )
    assert fresh.status_code == 400
    assert "inputs.target must be one of staging, production" in fresh.json()["message"]
