"""A spindle on real HTTP with a repo on the test knot, and answers checked against the lexicons.

The repo is served as Tangled serves repos now: by its own DID, with a TID record key; alice owns
it, bob collaborates, carol is a stranger; the spindle's owner is its own account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.ci import schemas
from app.config import Settings
from app.main import create_app
from app.repos import service as repos_service
from app.runs.flows import DispatchedPipeline
from app.runs.tid import new_tid
from app.xrpc.errors import InvalidRequest
from app.xrpc.lexicon import lexicons
from tests.runs.conftest import CI_YML, LINT_YAML, Identity, Spindle, new_identity
from tests.streams.harness import LoopServer
from tests.support.knot import GitRepo, TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import free_port


def valid_output(nsid: str, answer: Any) -> Any:
    """`answer` if it is a valid output of `nsid`; the test fails naming the field otherwise."""
    try:
        lexicons().output_validator(nsid)(answer)
    except InvalidRequest as exc:
        pytest.fail(f"{nsid} answered outside its lexicon: {exc.message}\n{answer!r}")
    return answer


def valid_message(nsid: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """`body` (a `#<kind>` frame's) if it is a valid message of the subscription `nsid`."""
    try:
        lexicons().message_validator(nsid)({"$type": f"{nsid}#{kind}", **body})
    except InvalidRequest as exc:
        pytest.fail(f"{nsid} sent a #{kind} message outside its lexicon: {exc.message}\n{body!r}")
    return body


@pytest.fixture
def alice(plc: FakePlc) -> Identity:
    """The repo's owner."""
    return new_identity(plc, "ES256K")


@pytest.fixture
def bob(plc: FakePlc) -> Identity:
    """A collaborator on the repo."""
    return new_identity(plc, "ES256")


@pytest.fixture
def carol(plc: FakePlc) -> Identity:
    """An account with no rights on the repo."""
    return new_identity(plc)


@pytest.fixture
def spindle_owner(plc: FakePlc) -> Identity:
    return new_identity(plc)


@asynccontextmanager
async def serve(settings: Settings, port: int) -> AsyncIterator[Spindle]:
    """The app under uvicorn on a loop tests can reach (a knot's event is handed to it there)."""
    with LoopServer(create_app(settings), port=port) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            spindle = Spindle(settings, server, client)
            try:
                yield spindle
            finally:
                await spindle.engine.dispose()


@pytest.fixture
async def spindle(
    make_settings: Callable[..., Settings], database_url: str, spindle_owner: Identity
) -> AsyncIterator[Spindle]:
    port = free_port()
    settings = make_settings(
        hostname=f"127.0.0.1:{port}", database_url=database_url, knot_timeout=2.0, owner=spindle_owner.did
    )
    async with serve(settings, port) as running:
        yield running


@dataclass
class Served:
    """The repo under test: its own DID, a TID record key, two workflows at `sha`."""

    spindle: Spindle
    knot: TestKnot
    git: GitRepo
    sha: str
    owner: Identity
    rkey: str

    @property
    def did(self) -> str:
        return self.git.did

    async def call(
        self, nsid: str, by: Identity | None, *, body: Any = None, lxm: str | None = None
    ) -> httpx.Response:
        """POST a procedure with a fresh service-auth token of `by` (for `lxm`, default the method)."""
        headers = {}
        if by is not None:
            headers["authorization"] = f"Bearer {by.token(self.spindle.settings.did, lxm=lxm or nsid)}"
        return await self.spindle.client.post(f"/xrpc/{nsid}", json=body, headers=headers)

    async def query(self, nsid: str, params: Any) -> httpx.Response:
        return await self.spindle.client.get(f"/xrpc/{nsid}", params=params)

    async def dispatch(self, rkey: str, kind: str = "push", **trigger: Any) -> Any:
        """A knot's `sh.tangled.pipeline` event for ci.yml at `sha`, through the knot flow."""
        server = self.spindle.server
        assert isinstance(server, LoopServer)
        meta = {"kind": kind, "repo": {"knot": self.knot.host, "did": self.owner.did}, **trigger}
        event = DispatchedPipeline(
            knot=self.knot.host,
            rkey=rkey,
            repo_did=self.did,
            repo_name=self.git.name,
            kind=kind,
            sha=self.sha,
            default_branch="main",
            names=("ci.yml",),
            trigger=meta,
        )
        return await server.call(self.spindle.ctx.flows.knot_pipeline(event))

    async def ours(self, rkey: str, by: Identity | None = None, **body: Any) -> httpx.Response:
        """Our own trigger (com.publicdomainrelay.temp.tangled.spindle.trigger)."""
        who = by or self.owner
        request = {
            "knot": self.knot.host,
            "pipelineRkey": rkey,
            "actor": who.did,
            "repoDid": self.did,
            "repoName": self.git.name,
            "ref": self.sha,
            **body,
        }
        return await self.spindle.trigger(request, by=who)

    async def trigger(self, by: Identity, **trigger: Any) -> httpx.Response:
        """triggerPipeline: a manual run at `sha` unless the trigger says otherwise."""
        workflows = trigger.pop("workflows", None)
        body: dict[str, Any] = {
            "repo": self.did,
            "trigger": {"$type": schemas.MANUAL, "sha": self.sha, **trigger},
        }
        if workflows is not None:
            body["workflows"] = workflows
        return await self.call(schemas.TRIGGER_NSID, by, body=body)


@pytest.fixture
async def served(spindle: Spindle, knot: TestKnot, alice: Identity, bob: Identity, plc: FakePlc) -> Served:
    repo_did = new_identity(plc).did  # the repo's own DID, apart from its owner's
    git = knot.create_repo(repo_did, "hello")
    sha = git.commit({".github/workflows/ci.yml": CI_YML, ".github/workflows/lint.yaml": LINT_YAML})
    rkey = new_tid()
    async with spindle.sessions() as session:
        await repos_service.add(
            session=session,
            knot=knot.host,
            did=repo_did,
            name="hello",
            owner_did=alice.did,
            collaborators=[bob.did],
            rkey=rkey,
        )
    return Served(spindle, knot, git, sha, alice, rkey)
