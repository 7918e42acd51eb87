"""One spindle (real HTTP, SQLite), one test knot and one registered repo shared by a hostile module.

Every case here is refused before anything is written, so a module shares one service and checks
deltas: `Ledger.snapshot()` before a request, `ledger.assert_unchanged(snapshot)` after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.config import Settings
from app.runs.models import Pipeline, WorkflowRun
from tests.conftest import OWNER_DID
from tests.runs.conftest import CI_YML, Identity, KnotRepo, Spindle, new_identity, serve
from tests.support.db import new_database
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import free_port

XRPC_ERROR_KEYS = {"error", "message"}


@dataclass
class Hostile:
    """The shared service, its knot and repo (owned by alice), and a second account (bob, ES256)."""

    spindle: Spindle
    repo: KnotRepo
    bob: Identity
    plc: FakePlc
    tmp: Path

    @property
    def alice(self) -> Identity:
        return self.repo.owner

    @property
    def knot(self) -> TestKnot:
        return self.repo.knot

    async def snapshot(self) -> tuple[int, ...]:
        """Pipelines and workflow runs recorded, and requests the knot has seen.

        (Status events and log lines are left out: runs accepted by earlier tests keep running.)
        """
        counts = [await self.spindle.count(model) for model in (Pipeline, WorkflowRun)]
        return (*counts, len(self.knot.requests))

    async def assert_unchanged(self, before: tuple[int, ...]) -> None:
        assert await self.snapshot() == before, "a refused request recorded something or reached the knot"


def assert_xrpc_error(response: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """`status` with an `{"error","message"}` body (of `error`, when given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and XRPC_ERROR_KEYS <= set(body), body
    assert isinstance(body["message"], str) and body["message"], body
    if error is not None:
        assert body["error"] == error, body
    return body


async def quiet_events(websocket: WebSocket) -> None:
    """A knot `/events` stream with nothing to say: the spindle stays subscribed instead of retrying."""
    await websocket.accept()
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile")
    new_database("sqlite", tmp)  # migrated here, outside the event loop
    return tmp


def hostile_settings(plc: FakePlc, tmp: Path, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "hostname": f"127.0.0.1:{port}",
        "owner": OWNER_DID,
        "plc_url": plc.url,  # type: ignore[attr-defined]
        "dev": True,
        "data_dir": tmp / "data",
        "database_url": f"sqlite+aiosqlite:///{tmp / 'spindle.db'}",
        "knot_timeout": 5.0,
        "jetstream_url": "",  # never the public Jetstream
        # Nothing refused here ever runs: no engine at all (a run that slipped through would fail).
        "docker_host": f"unix://{tmp}/no-engine.sock",
    }
    values.update(overrides)
    return Settings(**values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hostile(plc: FakePlc, module_tmp: Path) -> AsyncIterator[Hostile]:
    port = free_port()
    alice = new_identity(plc, "ES256K")
    bob = new_identity(plc, "ES256")
    with TestKnot(module_tmp / "knot", routes=[WebSocketRoute("/events", quiet_events)]) as knot:
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        async with serve(hostile_settings(plc, module_tmp, port), port) as spindle:
            await spindle.register(knot=knot.host, did=alice.did, name="hello")
            yield Hostile(spindle, KnotRepo(knot, git, sha, alice), bob, plc, module_tmp)
