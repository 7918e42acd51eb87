"""A spindle on real HTTP (uvicorn), real keys on a local PLC, a real git knot, both databases."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.context import AppContext
from app.database import create_engine, create_sessionmaker
from app.main import create_app
from app.repos import service as repos_service
from app.runs.models import Pipeline, StatusEvent, WorkflowRun
from app.runs.schemas import TRIGGER_NSID
from tests.support.keys import SigningKey, mint
from tests.support.knot import GitRepo, TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import ServerThread, free_port

# The jobs are `if: false`: the engine picks the runs up and skips them, spawning no processes.
CI_YML = """\
name: CI
on: push
jobs:
  build:
    if: false
    runs-on: ubuntu-latest
    steps:
      - run: echo building
"""

LINT_YAML = """\
on: [push, workflow_dispatch]
jobs:
  lint:
    if: false
    runs-on: ubuntu-latest
    steps:
      - run: echo linting
"""


@dataclass
class Identity:
    """An account: a real signing key whose DID document is on the local PLC."""

    key: SigningKey
    did: str

    def token(self, aud: str, *, lxm: str | None = TRIGGER_NSID, **kwargs: Any) -> str:
        return mint(self.key, iss=self.did, aud=aud, lxm=lxm, **kwargs)


@dataclass
class WakeCounter:
    count: int = 0


class Spindle:
    """The service under test on 127.0.0.1:<port>, and a client and database handle for the test."""

    def __init__(self, settings: Settings, server: ServerThread, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.server = server
        self.client = client
        self.engine: AsyncEngine = create_engine(settings.resolved_database_url)
        self.sessions: async_sessionmaker[AsyncSession] = create_sessionmaker(self.engine)
        self.wakes = WakeCounter()

    @property
    def ctx(self) -> AppContext:
        return self.server.config.app.state.ctx  # type: ignore[no-any-return]

    def spy_on_wake(self) -> None:
        scheduler = self.ctx.scheduler
        original = scheduler.wake

        def wake() -> None:
            self.wakes.count += 1
            original()

        scheduler.wake = wake  # type: ignore[method-assign]

    async def register(
        self, *, knot: str, did: str, name: str, owner: str | None = None, collaborators: Sequence[str] = ()
    ) -> None:
        async with self.sessions() as session:
            await repos_service.add(
                session=session,
                knot=knot,
                did=did,
                name=name,
                owner_did=owner or did,
                collaborators=collaborators,
            )

    async def trigger(
        self,
        body: Any = None,
        *,
        by: Identity | None = None,
        token: str | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST the trigger; `by` mints a fresh token (new jti) for that identity."""
        sent_headers = {"content-type": "application/json"}
        if by is not None:
            token = by.token(self.settings.did)
        if token is not None:
            sent_headers["authorization"] = f"Bearer {token}"
        sent_headers.update(headers or {})
        if content is None and body is not None:
            return await self.client.post(f"/xrpc/{TRIGGER_NSID}", json=body, headers=sent_headers)
        return await self.client.post(f"/xrpc/{TRIGGER_NSID}", content=content or b"", headers=sent_headers)

    async def pipelines(self) -> list[Pipeline]:
        async with self.sessions() as session:
            return list(await session.scalars(select(Pipeline).order_by(Pipeline.id)))

    async def count(self, model: type[Pipeline] | type[WorkflowRun] | type[StatusEvent]) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def events(self) -> list[StatusEvent]:
        async with self.sessions() as session:
            return list(await session.scalars(select(StatusEvent).order_by(StatusEvent.id)))


def new_identity(plc: FakePlc, alg: str = "ES256K") -> Identity:
    key = SigningKey.generate(alg)
    return Identity(key, plc.register(key))


@pytest.fixture
def alice(plc: FakePlc) -> Identity:
    """Owner of the repo under test (ES256K, as most PDSes sign)."""
    return new_identity(plc, "ES256K")


@pytest.fixture
def bob(plc: FakePlc) -> Identity:
    """Another account (ES256)."""
    return new_identity(plc, "ES256")


@asynccontextmanager
async def serve(settings: Settings, port: int, **server_config: Any) -> AsyncIterator[Spindle]:
    """Run the app for `settings` under uvicorn on `port`, with a client and a database handle
    (`server_config`: more uvicorn settings, e.g. app.server.uvicorn_options as `spindle serve` has)."""
    with ServerThread(create_app(settings), port=port, **server_config) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            spindle = Spindle(settings, server, client)
            spindle.spy_on_wake()
            try:
                yield spindle
            finally:
                await spindle.engine.dispose()


@pytest.fixture
def make_spindle(make_settings: Callable[..., Settings], database_url: str) -> Callable[..., Any]:
    """Start spindles (`async with make_spindle(**settings) as spindle`) on the parametrized database."""

    def start(**overrides: Any) -> Any:
        port = free_port()
        values: dict[str, Any] = {
            "hostname": f"127.0.0.1:{port}",
            "database_url": database_url,
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
class KnotRepo:
    """A repo with two workflows on the test knot, registered with the spindle, owned by alice."""

    knot: TestKnot
    git: GitRepo
    sha: str
    owner: Identity

    def body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "knot": self.knot.host,
            "pipelineRkey": "3l" + secrets.token_hex(6),
            "actor": self.owner.did,
            "repoDid": self.git.did,
            "repoName": self.git.name,
            "ref": self.sha,
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
async def repo(spindle: Spindle, knot: TestKnot, alice: Identity) -> KnotRepo:
    git = knot.create_repo(alice.did, "hello")
    sha = git.commit(
        {".github/workflows/ci.yml": CI_YML, ".github/workflows/lint.yaml": LINT_YAML, "README.md": "hi\n"}
    )
    await spindle.register(knot=knot.host, did=alice.did, name="hello")
    return KnotRepo(knot, git, sha, alice)
