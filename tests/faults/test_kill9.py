"""`kill -9` of a real `spindle serve` with one run running and two queued, then a restart.

Every trigger answered `submitted: true` must survive: the run that was running ends `failed`
with the restart error (its process died with the service), the queued ones run to completion
after the restart, and each run went through `running` exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest

from app.config import Settings
from app.engine.container.backend import LABEL_DEPLOYMENT, LABEL_ROLE, deployment_id
from app.engine.queue import RESTART_ERROR
from app.runs.schemas import TRIGGER_NSID
from tests.conftest import OWNER_DID
from tests.runs.conftest import Identity
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.podman import PodmanEngine
from tests.support.process import SpindleProcess
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

SLOW = """\
on: workflow_dispatch
jobs:
  slow:
    runs-on: ubuntu-latest
    steps:
      - run: echo slow-started; sleep 300
"""
QUICK = """\
on: workflow_dispatch
jobs:
  quick:
    runs-on: ubuntu-latest
    steps:
      - run: echo quick-done
"""
WAIT_SECONDS = 90.0  # a safety net against hangs, not a timing assertion


def wait_for(what: str, check: Any, service: SpindleProcess) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{service.output()}")
        time.sleep(0.1)


def status_of(client: httpx.Client, url: str, service: SpindleProcess) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200, f"{response.text}\n{service.output()}"
    return response.json()  # type: ignore[no-any-return]


def job_containers(url: str, deployment: str) -> list[str]:
    """Names of the containers of this test's spindle (its deployment) that still exist."""

    async def names() -> list[str]:
        async with aiodocker.Docker(url=url) as docker:
            # The job containers: not their disk meters or step containers.
            label = [f"{LABEL_DEPLOYMENT}={deployment}", f"{LABEL_ROLE}=job"]
            found = await docker.containers.list(all=True, filters={"label": label})
            return sorted(c._container["Names"][0] for c in found)

    return asyncio.run(names())


def test_queued_and_running_triggers_survive_kill_9_and_a_restart(
    tmp_path: Path, plc: FakePlc, knot: TestKnot, alice: Identity, podman_engine: PodmanEngine
):
    port = free_port()
    hostname = f"127.0.0.1:{port}"
    service = SpindleProcess(
        env={
            "SPINDLE_HOSTNAME": hostname,
            "SPINDLE_OWNER": OWNER_DID,
            "SPINDLE_DEV": "true",
            "SPINDLE_PLC_URL": plc.url,  # type: ignore[attr-defined]
            "SPINDLE_DATA_DIR": str(tmp_path / "data"),
            "SPINDLE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'spindle.db'}",
            "SPINDLE_INSTANCE_ID": "kill9-test",
            "SPINDLE_MAX_JOBS": "1",
            "SPINDLE_LOG_LEVEL": "warning",
            **podman_engine.env(),
        },
        port=port,
        log=tmp_path / "serve.log",
    )
    deployment = deployment_id(Settings(database_url=service.env["SPINDLE_DATABASE_URL"]))
    git = knot.create_repo(alice.did, "hello")
    slow_sha = git.commit({".github/workflows/slow.yml": SLOW})
    quick_sha = git.commit({".github/workflows/slow.yml": None, ".github/workflows/quick.yml": QUICK})
    service.cli("repo", "add", "--knot", knot.host, "--repo-did", alice.did, "--name", "hello")
    did = f"did:web:{hostname.replace(':', '%3A')}"

    def trigger(client: httpx.Client, sha: str) -> dict[str, Any]:
        body = {
            "knot": knot.host,
            "pipelineRkey": "k9" + secrets.token_hex(6),
            "actor": alice.did,
            "repoDid": alice.did,
            "repoName": "hello",
            "ref": sha,
        }
        token = alice.token(did, lxm=TRIGGER_NSID)
        response = client.post(
            f"{service.url}/xrpc/{TRIGGER_NSID}", json=body, headers={"authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["submitted"] is True
        return answer  # type: ignore[no-any-return]

    try:
        with httpx.Client(timeout=30) as client:
            service.start()
            slow = trigger(client, slow_sha)["workflows"][0]
            wait_for(
                "the slow step to start",
                lambda: "slow-started" in client.get(slow["logsUrl"].replace("ws://", "http://")).text,
                service,
            )
            queued = [trigger(client, quick_sha)["workflows"][0] for _ in range(2)]
            waiting = [status_of(client, q["statusUrl"], service)["status"] for q in queued]
            assert waiting == ["pending", "pending"]

            running = job_containers(podman_engine.url, deployment)
            assert len(running) == 1, running  # the slow job's container, up while its step sleeps

            service.kill9()
            # Killed, nothing of the spindle runs: the container it left is still there.
            assert job_containers(podman_engine.url, deployment) == running
            service.start()

            finished = [
                wait_for(
                    f"{w['statusUrl']} to finish",
                    lambda w=w: (
                        (s := status_of(client, w["statusUrl"], service))["status"]
                        in ("success", "failed", "timeout", "cancelled")
                        and s
                    ),
                    service,
                )
                for w in [slow, *queued]
            ]
    finally:
        service.stop()

    # The restarted spindle removed what the killed one left (the quick runs cleaned up after themselves).
    assert job_containers(podman_engine.url, deployment) == []
    slow_status, *quick_statuses = finished
    assert (slow_status["status"], slow_status.get("error")) == ("failed", RESTART_ERROR), slow_status
    for status in quick_statuses:
        assert status["status"] == "success", status
    for status in finished:
        transitions = [event["status"] for event in status["events"]]
        assert transitions.count("running") == 1, status
        assert transitions[0] == "pending" and transitions[-1] == status["status"], status
