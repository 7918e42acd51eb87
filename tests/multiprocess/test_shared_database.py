"""Two real `spindle serve` processes sharing one PostgreSQL database, as behind a load balancer.

Same hostname (so the same DID and tokens), different listen ports and instance ids. Triggers go
to both; one trigger is sent concurrently to both (a client retrying against another replica).
Pass: exactly one pipeline per record key, every run executed once (one `running` transition, its
output once in its log), and every status readable, identically, from either process.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from starlette.routing import WebSocketRoute

from app.database import create_engine, create_sessionmaker
from app.runs.models import Pipeline, WorkflowRun
from app.runs.schemas import TRIGGER_NSID
from tests.conftest import OWNER_DID
from tests.hostile.conftest import quiet_events
from tests.runs.conftest import Identity, new_identity
from tests.support.db import drop_database, new_database
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.podman import PodmanEngine
from tests.support.process import SpindleProcess
from tests.support.servers import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKFLOW = """\
on: workflow_dispatch
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo "ran-once-$GITHUB_RUN_ID"
"""
FINISHED = ("success", "failed", "timeout", "cancelled")
WAIT_SECONDS = 120.0  # a safety net against hangs, not a timing assertion


@pytest.fixture
def shared_url(tmp_path: Path) -> Iterator[str]:
    url = new_database("postgres", tmp_path)
    yield url
    drop_database(url)


@pytest.fixture
def events_knot(tmp_path: Path) -> Iterator[TestKnot]:
    with TestKnot(tmp_path / "knot", routes=[WebSocketRoute("/events", quiet_events)]) as knot:
        yield knot


async def test_two_processes_on_one_database_run_each_trigger_once(
    tmp_path: Path, shared_url: str, plc: FakePlc, events_knot: TestKnot, podman_engine: PodmanEngine
):
    knot = events_knot
    alice: Identity = new_identity(plc)
    git = knot.create_repo(alice.did, "hello")
    sha = git.commit({".github/workflows/ci.yml": WORKFLOW, ".github/workflows/lint.yml": WORKFLOW})
    hostname = "spindle.test"
    did = "did:web:spindle.test"
    services = [
        SpindleProcess(
            env={
                "SPINDLE_HOSTNAME": hostname,
                "SPINDLE_PUBLIC_URL": "http://spindle.test",
                "SPINDLE_OWNER": OWNER_DID,
                "SPINDLE_DEV": "true",
                "SPINDLE_PLC_URL": plc.url,  # type: ignore[attr-defined]
                "SPINDLE_DATA_DIR": str(tmp_path / f"data-{name}"),
                "SPINDLE_DATABASE_URL": shared_url,
                "SPINDLE_INSTANCE_ID": name,
                "SPINDLE_MAX_JOBS": "2",
                "SPINDLE_LOG_LEVEL": "warning",
                **podman_engine.env(),
            },
            port=free_port(),
            log=tmp_path / f"serve-{name}.log",
        )
        for name in ("alpha", "beta")
    ]
    services[0].cli("repo", "add", "--knot", knot.host, "--repo-did", alice.did, "--name", "hello")

    def body(rkey: str) -> dict[str, Any]:
        return {
            "knot": knot.host,
            "pipelineRkey": rkey,
            "actor": alice.did,
            "repoDid": alice.did,
            "repoName": "hello",
            "ref": sha,
        }

    async def trigger(client: httpx.AsyncClient, service: SpindleProcess, rkey: str) -> httpx.Response:
        token = alice.token(did, lxm=TRIGGER_NSID)
        return await client.post(
            f"{service.url}/xrpc/{TRIGGER_NSID}",
            json=body(rkey),
            headers={"authorization": f"Bearer {token}"},
        )

    def local(service: SpindleProcess, public_url: str) -> str:
        return service.url + public_url.removeprefix("http://spindle.test")

    try:
        for service in services:
            service.start()
        async with httpx.AsyncClient(timeout=60) as client:
            rkeys = ["mp" + secrets.token_hex(5) for _ in range(6)]
            singles = await asyncio.gather(
                *(trigger(client, services[i % 2], rkey) for i, rkey in enumerate(rkeys))
            )
            # Every copy reaches the knot before any is recorded: the race is real.
            knot.latency = 0.3
            duplicate = "dup" + secrets.token_hex(5)
            copies = await asyncio.gather(*(trigger(client, services[i % 2], duplicate) for i in range(6)))
            knot.latency = 0.0

            for response in [*singles, *copies]:
                assert response.status_code == 200, response.text
            assert all(c.json() == copies[0].json() for c in copies)
            workflows = [w for r in [*singles, copies[0]] for w in r.json()["workflows"]]

            documents: list[dict[str, Any]] = []
            deadline = time.monotonic() + WAIT_SECONDS
            for workflow in workflows:
                while True:
                    views = [(await client.get(local(s, workflow["statusUrl"]))) for s in services]
                    assert all(v.status_code == 200 for v in views), [v.text for v in views]
                    if views[0].json()["status"] in FINISHED and views[1].json()["status"] in FINISHED:
                        break
                    assert time.monotonic() < deadline, [s.output() for s in services]
                    await asyncio.sleep(0.1)
                assert views[0].json() == views[1].json()
                log_text = (
                    await client.get(local(services[1], workflow["logsUrl"].replace("ws:", "http:")))
                ).text
                documents.append({**views[0].json(), "log": log_text})
    finally:
        for service in services:
            service.stop()

    assert len(documents) == 2 * 7
    for doc in documents:
        assert doc["status"] == "success", doc
        assert [e["status"] for e in doc["events"]].count("running") == 1, doc
        assert len(re.findall(r"^ran-once-[0-9]+$", doc["log"], re.MULTILINE)) == 1, doc["log"]
    engine = create_engine(shared_url)
    try:
        async with create_sessionmaker(engine)() as session:
            pipelines = await session.scalar(select(func.count()).select_from(Pipeline))
            dups = await session.scalar(
                select(func.count()).select_from(Pipeline).where(Pipeline.rkey == duplicate)
            )
            owners = set(await session.scalars(select(WorkflowRun.claimed_by)))
    finally:
        await engine.dispose()
    assert (pipelines, dups) == (7, 1)
    assert owners <= {"alpha", "beta"}
