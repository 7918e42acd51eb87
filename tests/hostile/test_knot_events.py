"""A registered knot's `/events` stream sending junk and poison frames, lone surrogates included.

tests/events/test_knot_events_hostile.py covers floods, oversized frames and silent knots; this
sends every kind of bad frame down one connection, among them JSON with lone surrogate escapes (a
workflow or repo name that cannot be encoded as UTF-8), which must not become a frame that fails
on every replay. Pass: nothing bogus is recorded, the one connection survives, and a valid event
sent after the junk is still recorded.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.runs.models import Pipeline
from tests.hostile.conftest import Hostile, hostile_settings
from tests.runs.conftest import KnotRepo, new_identity, serve
from tests.support.db import new_database
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_SECONDS = 60.0  # a safety net against hangs, not a timing assertion
PUSHED = """\
on: push
jobs:
  build:
    if: false
    runs-on: ubuntu-latest
    steps:
      - run: echo pushed
"""
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def tid() -> str:
    return "3l" + "".join(secrets.choice(TID_ALPHABET) for _ in range(11))


class Script:
    """Frames the knot's /events socket sends to its subscriber as soon as a test queues them."""

    def __init__(self) -> None:
        self.frames: list[str | bytes] = []

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                frames, self.frames = self.frames, []
                for frame in frames:
                    if isinstance(frame, bytes):
                        await websocket.send_bytes(frame)
                    else:
                        await websocket.send_text(frame)
                await asyncio.sleep(0.05)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the subscriber went away


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("knot-events")
    new_database("sqlite", tmp)
    return tmp


@pytest.fixture(scope="module")
def script() -> Script:
    return Script()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(plc: FakePlc, module_tmp: Path, script: Script) -> AsyncIterator[Hostile]:
    port = free_port()
    alice = new_identity(plc)
    with TestKnot(module_tmp / "knot", routes=[WebSocketRoute("/events", script.endpoint)]) as knot:
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": PUSHED})
        async with serve(hostile_settings(plc, module_tmp, port), port) as spindle:
            yield Hostile(spindle, KnotRepo(knot, git, sha, alice), new_identity(plc), plc, module_tmp)


def push(env: Hostile, rkey: str, **changes: Any) -> dict[str, Any]:
    repo = {"knot": env.knot.host, "did": env.alice.did, "repo": "hello", "defaultBranch": "main"}
    repo.update(changes.pop("repo", {}))
    event = {
        "$type": "sh.tangled.pipeline",
        "triggerMetadata": {
            "kind": "push",
            "repo": repo,
            "push": {"ref": "refs/heads/main", "newSha": env.repo.sha, "oldSha": "0" * 40},
        },
        "workflows": [{"name": "ci.yml", "engine": "nixery"}],
    }
    event.update(changes)
    return {"rkey": rkey, "nsid": "sh.tangled.pipeline", "event": event}


async def wait_until(what: str, check: Callable[[], Any]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def rkeys(env: Hostile) -> set[str]:
    async with env.spindle.sessions() as session:
        return set(await session.scalars(select(Pipeline.rkey)))


async def test_junk_frames_record_nothing_and_the_next_valid_event_still_runs(env: Hostile, script: Script):
    good = tid()
    bogus = {tid() for _ in range(6)}
    b1, b2, b3, b4, b5, b6 = sorted(bogus)
    junk: list[str | bytes] = [
        b"\x00\xff\xfe binary garbage",
        "not json at all",
        "[1, 2, 3]",
        "[" * 50_000 + "]" * 50_000,
        json.dumps({"rkey": "../../etc", "nsid": "sh.tangled.pipeline", "event": {}}),
        json.dumps({"rkey": b1, "nsid": "sh.tangled.pipeline", "event": None}),
        json.dumps(push(env, b2, triggerMetadata={"kind": "push", "repo": {}, "push": {}})),
        json.dumps(push(env, b3, repo={"knot": "elsewhere.example.com"})),
        json.dumps(push(env, b4, repo={"repo": "not-registered"})),
        # Lone surrogates: valid JSON escapes, but not text that can be stored or hashed.
        json.dumps(push(env, b5, workflows=[{"name": "ci\ud800.yml"}])),
        json.dumps(push(env, b6, repo={"repo": "hello\udfff"})),
        json.dumps({"rkey": tid(), "nsid": "sh.tangled.somethingElse", "event": {"x": 1}}),
    ]
    script.frames = [*junk, json.dumps(push(env, good))]
    await env.spindle.register(knot=env.knot.host, did=env.alice.did, name="hello")

    async def recorded() -> bool:
        return good in await rkeys(env)

    await wait_until("the valid event to be recorded", recorded)

    assert (await rkeys(env)) & bogus == set()
    link = env.spindle.ctx.consumer.links[env.knot.host]
    assert link.connects == 1, f"the subscription dropped: {link.last_error}"
    assert link.frames == len(junk) + 1
