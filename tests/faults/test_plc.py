"""The PLC directory fails while triggers arrive: 401 (never 500, never a hang) without a cached
document, business as usual with one, and recovery when the directory comes back.

The directory here is a FakePlc whose answers a test can break: down (503), hanging, garbage,
an oversized answer, a document for another DID, a dropped connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import WebSocketRoute

from app.runs.models import Pipeline
from tests.hostile.conftest import Hostile, assert_xrpc_error, hostile_settings, quiet_events
from tests.runs.conftest import CI_YML, Identity, KnotRepo, new_identity, serve
from tests.support.db import new_database
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import ServerThread, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

RESOLVE_TIMEOUT = 1.0


class FlakyPlc(FakePlc):
    """A FakePlc that answers in the way `mode` says: ok, down, hang, garbage, huge, other-did, drop."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"

    async def _get(self, request: Request) -> Response:
        did = request.path_params["did"]
        self.requests[did] += 1
        if self.mode == "down":
            return JSONResponse({"message": "unavailable"}, status_code=503)
        if self.mode == "hang":
            await asyncio.sleep(RESOLVE_TIMEOUT * 5)
        if self.mode == "garbage":
            return Response(b"<html>not json</html>", media_type="application/json")
        if self.mode == "huge":
            return Response(b" " * (1024 * 1024) + b"{}", media_type="application/json")
        if self.mode == "other-did" and did in self.documents:
            key_doc = self.documents[did]
            return JSONResponse({**key_doc, "id": "did:plc:someoneelseaaaaaaaaaaaaa"})
        if self.mode == "drop":
            raise ConnectionResetError("dropped on purpose")
        return await super()._get(request)


@pytest.fixture(scope="module")
def flaky() -> Iterator[FlakyPlc]:
    directory = FlakyPlc()
    with ServerThread(directory.app, timeout_graceful_shutdown=1) as server:
        directory.url = server.url  # type: ignore[attr-defined]
        yield directory


@pytest.fixture
def plc_mode(flaky: FlakyPlc) -> Iterator[FlakyPlc]:
    yield flaky
    flaky.mode = "ok"


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("plc-faults")
    new_database("sqlite", tmp)
    return tmp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(flaky: FlakyPlc, module_tmp: Path) -> AsyncIterator[Hostile]:
    port = free_port()
    alice = new_identity(flaky)
    with TestKnot(module_tmp / "knot", routes=[WebSocketRoute("/events", quiet_events)]) as knot:
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        async with serve(hostile_settings(flaky, module_tmp, port), port) as spindle:
            spindle.ctx.resolver.timeout = RESOLVE_TIMEOUT
            await spindle.register(knot=knot.host, did=alice.did, name="hello")
            yield Hostile(spindle, KnotRepo(knot, git, sha, alice), new_identity(flaky), flaky, module_tmp)


async def newcomer(env: Hostile) -> tuple[Identity, KnotRepo]:
    """An account the service has never resolved, owning a registered repo."""
    who = new_identity(env.plc)
    git = env.knot.create_repo(who.did, "repo")
    sha = git.commit({".github/workflows/ci.yml": CI_YML})
    await env.spindle.register(knot=env.knot.host, did=who.did, name="repo")
    return who, KnotRepo(env.knot, git, sha, who)


@pytest.mark.parametrize("mode", ["down", "hang", "garbage", "huge", "other-did", "drop"])
async def test_an_uncached_issuer_is_401_while_the_directory_fails(
    env: Hostile, plc_mode: FlakyPlc, mode: str
):
    who, repo = await newcomer(env)
    plc_mode.mode = mode
    before = await env.spindle.count(Pipeline)

    async with asyncio.timeout(RESOLVE_TIMEOUT * 10):
        response = await env.spindle.trigger(repo.body(), by=who)

    body = assert_xrpc_error(response, 401, "BadJwt")
    assert f"could not resolve the JWT issuer {who.did}" in body["message"], body
    assert await env.spindle.count(Pipeline) == before


async def test_the_issuer_resolves_once_the_directory_is_back(env: Hostile, plc_mode: FlakyPlc):
    who, repo = await newcomer(env)
    plc_mode.mode = "down"
    refused = await env.spindle.trigger(repo.body(), by=who)
    plc_mode.mode = "ok"

    accepted = await env.spindle.trigger(repo.body(), by=who)

    assert refused.status_code == 401
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize("mode", ["down", "hang", "garbage", "drop"])
async def test_a_cached_issuer_keeps_working_while_the_directory_fails(
    env: Hostile, plc_mode: FlakyPlc, mode: str
):
    who, repo = await newcomer(env)
    assert (await env.spindle.trigger(repo.body(), by=who)).status_code == 200  # now cached
    resolver = env.spindle.ctx.resolver
    fresh_ttl, retry_after = resolver.fresh_ttl, resolver.retry_after
    # Cached but stale, so that every request goes to the failing directory first.
    resolver.fresh_ttl = resolver.retry_after = 0
    plc_mode.mode = mode
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT * 10):
            response = await env.spindle.trigger(repo.body(), by=who)
    finally:
        resolver.fresh_ttl, resolver.retry_after = fresh_ttl, retry_after

    assert response.status_code == 200, response.text
    assert env.plc.requests[who.did] >= 2, "the directory was asked again"
