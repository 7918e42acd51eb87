"""A real trigger run by the real engine, watched through every stream, and cancelled while it runs."""

from __future__ import annotations

import asyncio

import httpx
from websockets.asyncio.client import connect

from app.repos import service as repos_service
from app.runs.cancel import CANCEL_NSID
from app.runs.schemas import TRIGGER_NSID
from tests.streams.harness import Service
from tests.streams.wire import PATIENCE, frames, frames_until_closed, sse_events
from tests.support.keys import SigningKey, mint
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc

HELLO = """\
on: [push, workflow_dispatch]
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - name: say hello
        run: |
          echo hello from the runner
          echo to stderr >&2
"""
SLEEPY = """\
on: workflow_dispatch
jobs:
  wait:
    runs-on: ubuntu-latest
    steps:
      - run: echo started; sleep 60
"""


async def trigger(service: Service, plc: FakePlc, knot: TestKnot, workflow: str, rkey: str) -> tuple:
    """Register a repo of a fresh account holding `workflow`, trigger it; (account, response JSON)."""
    key = SigningKey.generate("ES256K")
    did = plc.register(key)
    repo = knot.create_repo(did, "e2e")
    sha = repo.commit({".github/workflows/ci.yml": workflow})

    async def register() -> None:
        async with service.ctx.sessionmaker() as session:
            await repos_service.add(
                session=session, knot=knot.host, did=did, name="e2e", owner_did=did, collaborators=()
            )

    await service.server.call(register())  # the service's database engine lives on its loop
    body = {
        "knot": knot.host,
        "pipelineRkey": rkey,
        "actor": did,
        "repoDid": did,
        "repoName": "e2e",
        "ref": sha,
    }
    token = mint(key, iss=did, aud=service.settings.did, lxm=TRIGGER_NSID)
    async with httpx.AsyncClient(timeout=PATIENCE) as client:
        response = await client.post(
            f"{service.url}/xrpc/{TRIGGER_NSID}", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    return (key, did), response.json()


async def test_a_triggered_workflow_streams_its_log_and_status_to_the_end(service, plc, knot):
    async with connect(f"{service.ws_url}/events") as events:
        _, answer = await trigger(service, plc, knot, HELLO, "3e2ehello")
        (workflow,) = answer["workflows"]
        async with connect(workflow["logsUrl"]) as ws:
            lines = await frames_until_closed(ws)
        statuses = [f["event"]["status"] for f in await frames(events, 3)]
    async with httpx.AsyncClient(timeout=PATIENCE) as client:
        doc = (await client.get(workflow["statusUrl"])).json()
        text = (await client.get(workflow["logsUrl"].replace("ws", "http", 1))).text

    data = [(line["content"], line["stream"]) for line in lines if line["kind"] == "data"]
    assert ("hello from the runner", "stdout") in data and ("to stderr", "stderr") in data
    assert any(line["kind"] == "control" and line["step_status"] == "start" for line in lines)
    assert statuses == ["pending", "running", "success"]
    assert doc["status"] == "success" and [e["status"] for e in doc["events"]] == statuses
    assert "hello from the runner\n" in text


async def test_cancelling_a_running_workflow_stops_it_and_ends_its_streams(service, plc, knot):
    (key, did), answer = await trigger(service, plc, knot, SLEEPY, "3e2esleep")
    (workflow,) = answer["workflows"]
    pipeline = f"at://did:web:{answer['knot'].replace(':', '%3A')}/sh.tangled.pipeline/3e2esleep"
    body = {"repo": f"at://{did}/sh.tangled.repo/e2e", "pipeline": pipeline, "workflow": workflow["workflow"]}
    headers = {"Authorization": f"Bearer {mint(key, iss=did, aud=service.settings.did, lxm=CANCEL_NSID)}"}
    async with httpx.AsyncClient(timeout=PATIENCE) as client:
        async with connect(workflow["logsUrl"]) as ws:
            async with asyncio.timeout(PATIENCE):
                while (await frames(ws, 1))[0]["content"] != "started":
                    pass  # the spindle's own notes and the step's start come first
            sse = {"Accept": "text/event-stream"}
            async with client.stream("GET", workflow["statusUrl"], headers=sse) as response:
                status = sse_events(response)
                assert (await anext(status))["data"]["status"] == "running"
                cancelled = await client.post(f"{service.url}/xrpc/{CANCEL_NSID}", json=body, headers=headers)
                assert cancelled.status_code == 200 and cancelled.json() == {}
                async with asyncio.timeout(PATIENCE):
                    final = [event["data"]["status"] async for event in status]
            await frames_until_closed(ws)
            assert ws.close_code == 1000
    assert final == ["cancelled"]
