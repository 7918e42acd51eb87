"""Secrets in real runs on Podman, watched through the service's own WebSocket and plain-text log.

A registered repo has secrets; its run maps them into `env:`, prints them in clear, in base64 and
line by line, and registers a value of its own with `::add-mask::`. Whatever path the log takes
(the stored rows, the SQLite file, the live WebSocket stream, the plain-text log), no value shows.
A fork's pull request of the same repo gets no secrets at all.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect

from app.config import Settings
from app.main import create_app
from app.repos.models import Repo
from app.runs.models import Pipeline, Status, WorkflowRun
from app.secrets import service
from app.secrets.crypto import SecretCipher
from tests.engine.conftest import Harness
from tests.secrets.conftest import REPO_DID, REPO_NAME, register_repo
from tests.support.servers import ServerThread, free_port

# A closed port on loopback: the knot event consumer of the app under test finds nothing there.
KNOT = "127.0.0.1:9"
TOKEN = "tok-Zq8Yw2vX9pLm4Rt7Kd3s"
CERT = "-----BEGIN TEST KEY-----\nMIIBVQIBADANBgkqhkiG9w0B\nAQEFAASCAT8wggE7AgEAAkEA\n-----END TEST KEY-----"
GENERATED = "made-up-Value-4242"
WAIT = 120.0  # a safety net against hangs, not a timing assertion

WORKFLOW = """\
on: workflow_dispatch
jobs:
  show:
    name: deploy as ${{ secrets.DEPLOY_TOKEN }}
    runs-on: ubuntu-latest
    steps:
      - name: use the secrets
        env:
          TOKEN: ${{ secrets.DEPLOY_TOKEN }}
          CERT: ${{ secrets.SIGNING_KEY }}
        run: |
          echo "token=$TOKEN"
          echo "token length ${#TOKEN}"
          printf '%s' "$TOKEN" | base64
          printf 'user:%s' "$TOKEN" | base64
          echo "$CERT"
          echo "ambient=${DEPLOY_TOKEN:-unset} ${SIGNING_KEY:-unset}"
          generated="made-up-$(printf Value)-4242"
          echo "::add-mask::$generated"
          echo "generated $generated here"
      - name: a condition on a secret
        if: secrets.DEPLOY_TOKEN == 'something else'
        run: echo never
      - name: an expression that fails on the value
        continue-on-error: true
        run: echo "${{ fromJSON(secrets.DEPLOY_TOKEN) }}"
"""

FORK_WORKFLOW = """\
on: pull_request
jobs:
  show:
    runs-on: ubuntu-latest
    steps:
      - run: echo "token=[${{ secrets.DEPLOY_TOKEN }}]"
"""


def _forms() -> list[str]:
    """Texts that must appear nowhere: the values, their base64, each line of the multi-line one."""
    forms = [TOKEN, CERT, GENERATED, base64.b64encode(TOKEN.encode()).decode()]
    forms += [line for line in CERT.split("\n")]
    return forms


@pytest.fixture
def app_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    port = free_port()
    return make_settings(
        hostname=f"localhost:{port}",
        listen=f"127.0.0.1:{port}",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'spindle.db'}",
        max_jobs=2,
    )


@pytest.fixture
async def harness(
    sqlite_url: str, app_settings: Settings, make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Harness]:
    url = sqlite_url
    assert url == app_settings.resolved_database_url
    harness = Harness(url=url, make_settings=make_settings, tmp_path=tmp_path)
    try:
        yield harness
    finally:
        await harness.aclose()


@pytest.fixture
def server(app_settings: Settings, harness: Harness) -> Iterator[ServerThread]:
    with ServerThread(
        create_app(app_settings), port=app_settings.listen_port, timeout_graceful_shutdown=5
    ) as srv:
        yield srv


async def _add_secrets(harness: Harness, settings: Settings) -> None:
    await register_repo(harness.url, knot=KNOT)
    cipher = SecretCipher.from_settings(settings)
    async with harness.sessionmaker() as session:
        repo = await session.scalar(select(Repo).where(Repo.did == REPO_DID))
        assert repo is not None
        for key, value in (("DEPLOY_TOKEN", TOKEN), ("SIGNING_KEY", CERT)):
            await service.add(
                session=session, cipher=cipher, repo=repo, key=key, value=value, created_by=REPO_DID
            )


async def _watch(url: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with connect(url) as ws:
        async for message in ws:
            frames.append(json.loads(message))
    return frames


async def _rkey(harness: Harness, run_id: int) -> str:
    async with harness.sessionmaker() as session:
        run = await session.get(WorkflowRun, run_id)
        assert run is not None
        pipeline = await session.get(Pipeline, run.pipeline_id)
        assert pipeline is not None
        return pipeline.rkey


async def test_secrets_reach_the_step_and_are_masked_in_every_log_path(
    harness: Harness, server: ServerThread, app_settings: Settings, tmp_path: Path
) -> None:
    await _add_secrets(harness, app_settings)
    run_id = await harness.add_run(WORKFLOW, knot=KNOT, repo_did=REPO_DID, repo_name=REPO_NAME)
    rkey = await _rkey(harness, run_id)
    path = f"/logs/{KNOT}/{rkey}/ci"
    frames = await asyncio.wait_for(_watch(app_settings.ws_base_url + path), WAIT)
    run = await harness.wait(run_id)
    async with httpx.AsyncClient(base_url=app_settings.base_url) as client:
        text = (await client.get(path)).text
    stored = await harness.lines(run_id)
    stored_text = "\n".join(f"{line.content}\n{line.step_command or ''}" for line in stored)
    streamed = "\n".join(str(frame.get("content")) + str(frame.get("step_command")) for frame in frames)
    assert run.status is Status.SUCCESS, stored_text

    # The values reached the step: through env: as mapped, never as ambient variables.
    assert "token length 24" in text
    assert "token=***" in text
    assert "ambient=unset unset" in text
    assert "generated *** here" in text
    assert "::add-mask::***" in text
    assert "job deploy as ***" in text
    assert "step 'a condition on a secret' of job 'deploy as ***' skipped: its if: is false" in text
    for where, shown in (("stored rows", stored_text), ("WebSocket", streamed), ("plain text", text)):
        for form in _forms():
            assert form not in shown, f"{form!r} shows in the {where}"
    database = tmp_path / "spindle.db"
    on_disk = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert b"token length 24" in on_disk
    for form in _forms():
        assert form.encode() not in on_disk


async def test_a_fork_pull_request_gets_no_secrets(
    harness: Harness, server: ServerThread, app_settings: Settings
) -> None:
    await _add_secrets(harness, app_settings)
    run_id = await harness.add_run(
        FORK_WORKFLOW,
        knot=KNOT,
        repo_did=REPO_DID,
        repo_name=REPO_NAME,
        trigger_kind="pull_request",
        trigger={"sourceRepo": "did:plc:forkerforkerforker0000", "pullRequest": {"sourceBranch": "patch"}},
    )
    run = await harness.wait(run_id)
    output = await harness.output(run_id)
    assert run.status is Status.SUCCESS, output
    assert "token=[]" in output
    assert any("a fork's pull request" in line and "no secrets" in line for line in output)


async def test_a_pull_request_from_the_repo_itself_gets_its_secrets(
    harness: Harness, server: ServerThread, app_settings: Settings
) -> None:
    await _add_secrets(harness, app_settings)
    run_id = await harness.add_run(
        FORK_WORKFLOW,
        knot=KNOT,
        repo_did=REPO_DID,
        repo_name=REPO_NAME,
        trigger_kind="pull_request",
        trigger={"pullRequest": {"sourceBranch": "patch"}},
    )
    run = await harness.wait(run_id)
    output = await harness.output(run_id)
    assert run.status is Status.SUCCESS, output
    assert "token=[***]" in output
