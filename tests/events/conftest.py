"""The spindle under uvicorn, a git knot with an `/events` stream, and a registered repo.

Every wait polls with a generous deadline: a safety net against hangs, never a timing assertion.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.context import AppContext
from app.database import create_engine, create_sessionmaker
from app.knot import events as knot_events
from app.knot.events import KnotEventConsumer, KnotLink, tid_time_ns
from app.knot.models import KnotCursor
from app.main import create_app
from app.repos import service as repos_service
from app.runs.models import Pipeline, Status, WorkflowRun
from tests.support.knot import GitRepo, TestKnot
from tests.support.knot_events import KnotEventStream
from tests.support.servers import ServerThread, free_port

WAIT_SECONDS = 120.0
T = TypeVar("T")

CI_YML = """\
name: CI
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: |
          echo "event=$GITHUB_EVENT_NAME ref=$GITHUB_REF sha=$(git rev-parse HEAD)"
          cat README.md
"""

LINT_YML = """\
on: push
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: echo linting
"""

DEPLOY_YML = """\
on:
  workflow_dispatch:
    inputs:
      target:
        required: true
      dry_run:
        type: boolean
        default: true
jobs:
  deploy:
    runs-on: ubuntu-latest
    steps:
      - run: echo "target=${{ inputs.target }} dry_run=${{ inputs.dry_run }} kind=$TANGLED_PIPELINE_KIND"
"""

# A job that is skipped: the run succeeds without starting a sandbox (cheap, for floods).
QUICK_YML = """\
on: push
jobs:
  nothing:
    if: ${{ false }}
    runs-on: ubuntu-latest
    steps:
      - run: echo never
"""


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, what: str, timeout: float = WAIT_SECONDS
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g} s")
        await asyncio.sleep(0.05)


def minted(rkey: str) -> int:
    """When the knot minted a TID rkey (unix ns): the cursor it leaves behind."""
    value = tid_time_ns(rkey)
    assert value is not None, f"{rkey} is not a TID"
    return value


class Spindle:
    """The service under test on 127.0.0.1:<port>, with an HTTP client and its database."""

    def __init__(
        self, settings: Settings, app: FastAPI, server: ServerThread, client: httpx.AsyncClient
    ) -> None:
        self.settings = settings
        self.app = app
        self.server = server
        self.client = client
        self.engine: AsyncEngine = create_engine(settings.resolved_database_url)
        self.sessions: async_sessionmaker[AsyncSession] = create_sessionmaker(self.engine)

    @property
    def ctx(self) -> AppContext:
        return self.app.state.ctx  # type: ignore[no-any-return]

    @property
    def consumer(self) -> KnotEventConsumer:
        return self.ctx.consumer

    def link(self, knot: str) -> KnotLink | None:
        return self.consumer.links.get(knot)

    async def register(self, knot: str, repo: GitRepo) -> None:
        async with self.sessions() as session:
            await repos_service.add(
                session=session, knot=knot, did=repo.did, name=repo.name, owner_did=repo.did, collaborators=()
            )

    async def unregister(self, knot: str, repo: GitRepo) -> None:
        async with self.sessions() as session:
            await repos_service.remove(session=session, knot=knot, did=repo.did, name=repo.name)

    async def pipelines(self) -> list[Pipeline]:
        async with self.sessions() as session:
            return list(await session.scalars(select(Pipeline).order_by(Pipeline.id)))

    async def pipeline(self, knot: str, rkey: str) -> Pipeline | None:
        async with self.sessions() as session:
            return await session.scalar(select(Pipeline).where(Pipeline.knot == knot, Pipeline.rkey == rkey))

    async def count(self, model: type[Pipeline] | type[WorkflowRun]) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def cursor(self, knot: str) -> int | None:
        async with self.sessions() as session:
            row = await session.get(KnotCursor, knot)
            return row.cursor if row else None

    async def recorded(self, knot: str, rkey: str) -> Pipeline:
        async def find() -> Pipeline | None:
            return await self.pipeline(knot, rkey)

        return await eventually(find, what=f"pipeline {rkey} to be recorded")

    async def finished(self, knot: str, rkey: str, workflow: str) -> dict[str, Any]:
        """The status document of a run, once it has finished."""

        async def done() -> dict[str, Any] | None:
            response = await self.client.get(f"/status/{knot}/{rkey}/{workflow}")
            if response.status_code != 200:
                return None
            body: dict[str, Any] = response.json()
            return body if Status(body["status"]).is_finished else None

        return await eventually(done, what=f"run {rkey}/{workflow} to finish")

    async def connected(self, knot: str, *, connects: int = 1) -> KnotLink:
        async def up() -> KnotLink | None:
            link = self.link(knot)
            return link if link and link.connected and link.connects >= connects else None

        return await eventually(up, what=f"a connection to {knot}")


@pytest.fixture(autouse=True)
def fast_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registry checks every 0.1 s and reconnects within half a second, to keep tests short."""
    monkeypatch.setattr(knot_events, "REFRESH_SECONDS", 0.1)
    monkeypatch.setattr(knot_events, "BACKOFF_START", 0.05)
    monkeypatch.setattr(knot_events, "BACKOFF_MAX", 0.5)


@pytest.fixture
def db_url(database_url: str) -> str:
    """The database tests run on: both kinds by default; a module may narrow it to SQLite."""
    return database_url


@asynccontextmanager
async def serve(settings: Settings, port: int) -> AsyncIterator[Spindle]:
    app = create_app(settings)
    with ServerThread(app, port=port) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            spindle = Spindle(settings, app, server, client)
            try:
                yield spindle
            finally:
                await spindle.engine.dispose()


@pytest.fixture
def make_spindle(make_settings: Callable[..., Settings], db_url: str) -> Callable[..., Any]:
    """`async with make_spindle() as spindle`: a fresh process of the service on the same database."""
    port = free_port()

    def start(**overrides: Any) -> Any:
        values: dict[str, Any] = {
            "hostname": f"127.0.0.1:{port}",
            "database_url": db_url,
            "knot_timeout": 2.0,
        }
        values.update(overrides)
        return serve(make_settings(**values), port)

    return start


@pytest.fixture
async def spindle(make_spindle: Callable[..., Any]) -> AsyncIterator[Spindle]:
    async with make_spindle() as running:
        yield running


@dataclass
class EventKnot:
    """The test knot, its `/events` stream and a repo on it with workflows in both directories."""

    knot: TestKnot
    stream: KnotEventStream
    repo: GitRepo
    sha: str

    @property
    def host(self) -> str:
        return self.knot.host


@contextmanager
def make_event_knot(root: Path, did: str = "did:plc:aliceaaaaaaaaaaaaaaaaaaa") -> Iterator[EventKnot]:
    knot = TestKnot(root)
    stream = KnotEventStream.attach(knot)
    with knot:
        repo = knot.create_repo(did, "hello")
        sha = repo.commit(
            {
                ".tangled/workflows/ci.yml": "when:\n  - event: push\n",
                ".github/workflows/ci.yml": CI_YML,
                ".github/workflows/lint.yml": LINT_YML,
                ".github/workflows/deploy.yaml": DEPLOY_YML,
                ".github/workflows/quick.yml": QUICK_YML,
                "README.md": "hello from the knot\n",
            }
        )
        try:
            yield EventKnot(knot, stream, repo, sha)
        finally:
            stream.close()


@pytest.fixture
def event_knot(tmp_path: Path) -> Iterator[EventKnot]:
    with make_event_knot(tmp_path / "knot") as made:
        yield made


@pytest.fixture
async def registered(spindle: Spindle, event_knot: EventKnot) -> EventKnot:
    """The repo registered with the spindle, and the spindle subscribed to the knot."""
    await spindle.register(event_knot.host, event_knot.repo)
    await spindle.connected(event_knot.host)
    return event_knot
