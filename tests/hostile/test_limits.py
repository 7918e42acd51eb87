"""Holding up under abuse, against the service as `spindle serve` runs it (uvicorn with
app.server's protocol) on real sockets: request deadlines, watcher caps, bounded /events replay,
watchers that stop reading, while /healthz and triggers keep answering."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.runs.models import Status, StatusEvent, WorkflowRun
from app.server import uvicorn_options
from tests.hostile.conftest import assert_xrpc_error, hostile_settings
from tests.runs.conftest import CI_YML, KnotRepo, Spindle, new_identity, serve
from tests.support.db import new_database
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import free_port

Started = Callable[..., Any]


@pytest.fixture
def start(plc: FakePlc, tmp_path: Path, knot: TestKnot) -> Started:
    """`async with start(**settings) as (spindle, repo)`: a spindle served as in production, with
    a registered repo on the test knot (runs fail at once: there is no container engine)."""
    new_database("sqlite", tmp_path)

    @asynccontextmanager
    async def running(**overrides: Any) -> AsyncIterator[tuple[Spindle, KnotRepo]]:
        port = free_port()
        settings = hostile_settings(plc, tmp_path, port, **overrides)
        alice = new_identity(plc)
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        async with serve(settings, port, **uvicorn_options(settings)) as spindle:
            await spindle.register(knot=knot.host, did=alice.did, name="hello")
            yield spindle, KnotRepo(knot, git, sha, alice)

    return running


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the test's deadline)."""
    async with asyncio.timeout(20):
        return await reader.read()


async def healthy(spindle: Spindle) -> None:
    response = await spindle.client.get("/healthz")
    assert response.status_code == 200, response.text


# -- request deadlines ------------------------------------------------------------------------


async def test_a_request_line_left_half_sent_is_answered_408_and_closed(start: Started) -> None:
    async with start(header_timeout=0.5) as (spindle, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", spindle.server.port)
        writer.write(b"GET /hea")
        await writer.drain()
        answer = await read_until_closed(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "RequestTimeout"
        await healthy(spindle)


async def test_a_connection_that_sends_nothing_is_closed(start: Started) -> None:
    async with start(header_timeout=0.5) as (spindle, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", spindle.server.port)
        assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()


async def test_headers_without_their_end_are_answered_408_after_a_keep_alive_request(start: Started) -> None:
    async with start(header_timeout=0.5) as (spindle, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", spindle.server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        answer = await read_until_closed(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"HTTP/1.1 408 " in answer


async def test_a_body_that_stops_coming_closes_the_connection_and_records_nothing(start: Started) -> None:
    async with start(body_timeout=0.5) as (spindle, repo):
        token = repo.owner.token(spindle.settings.did)
        body = json.dumps(repo.body()).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", spindle.server.port)
        writer.write(
            b"POST /xrpc/com.publicdomainrelay.temp.tangled.spindle.trigger HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
        await writer.drain()
        assert await read_until_closed(reader) == b""
        writer.close()
        assert await spindle.pipelines() == []
        await healthy(spindle)


# -- watcher caps -----------------------------------------------------------------------------


def events_url(spindle: Spindle, query: str = "") -> str:
    return f"ws://127.0.0.1:{spindle.server.port}/events{query}"


async def watch(stack: AsyncExitStack, spindle: Spindle, address: str = "127.0.0.1") -> ClientConnection:
    return await stack.enter_async_context(connect(events_url(spindle), local_addr=(address, 0)))


async def test_watchers_past_the_per_address_cap_are_refused_429_while_health_and_triggers_answer(
    start: Started,
) -> None:
    async with (
        start(max_watchers_per_address=2, max_watchers=10) as (spindle, repo),
        AsyncExitStack() as stack,
    ):
        for _ in range(2):
            await watch(stack, spindle)
        with pytest.raises(InvalidStatus) as refused:
            await watch(stack, spindle)
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body or b"{}")["error"] == "RateLimitExceeded"
        assert refused.value.response.headers["Retry-After"]
        await watch(stack, spindle, "127.0.0.2")  # another address has its own share
        await healthy(spindle)
        triggered = await spindle.trigger(repo.body(), by=repo.owner)
        assert triggered.status_code == 200, triggered.text


async def test_watchers_past_the_overall_cap_are_refused_503_and_a_freed_slot_is_reused(
    start: Started,
) -> None:
    async with start(max_watchers_per_address=5, max_watchers=3) as (spindle, _), AsyncExitStack() as stack:
        first = await watch(stack, spindle, "127.0.0.1")
        await watch(stack, spindle, "127.0.0.2")
        await watch(stack, spindle, "127.0.0.3")
        with pytest.raises(InvalidStatus) as refused:
            await watch(stack, spindle, "127.0.0.4")
        assert refused.value.response.status_code == 503
        await healthy(spindle)
        await first.close()
        await wait_until_accepted(spindle, "127.0.0.4")


async def wait_until_accepted(spindle: Spindle, address: str = "127.0.0.1") -> None:
    """Connect to /events until the service takes the socket (a slot is freed asynchronously)."""
    async with asyncio.timeout(20):
        while True:
            try:
                async with connect(events_url(spindle), local_addr=(address, 0)):
                    return
            except InvalidStatus:
                await asyncio.sleep(0.05)


async def test_a_status_stream_past_the_cap_is_refused_429(start: Started) -> None:
    async with start(max_watchers_per_address=1) as (spindle, repo), AsyncExitStack() as stack:
        body = repo.body()
        assert (await spindle.trigger(body, by=repo.owner)).status_code == 200
        await watch(stack, spindle)
        response = await spindle.client.get(
            f"/status/{body['knot']}/{body['pipelineRkey']}/ci", headers={"accept": "text/event-stream"}
        )
        assert_xrpc_error(response, 429, "RateLimitExceeded")
        assert int(response.headers["retry-after"]) >= 1


# -- /events replay ---------------------------------------------------------------------------


async def add_events(spindle: Spindle, count: int) -> None:
    """`count` more status events of one run, written straight to the database."""
    async with spindle.sessions() as session:
        run_id = await session.scalar(WorkflowRun.__table__.select().with_only_columns(WorkflowRun.id))
        if run_id is None:
            raise AssertionError("trigger a run first")
        await session.execute(
            insert(StatusEvent), [{"workflow_run_id": run_id, "status": Status.RUNNING} for _ in range(count)]
        )
        await session.commit()


async def frames_until_close(websocket: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    async with asyncio.timeout(30):
        try:
            while True:
                frames.append(json.loads(await websocket.recv()))
        except ConnectionClosed:
            return frames


async def test_a_replay_stops_at_its_bound_and_names_the_cursor_to_continue_from(start: Started) -> None:
    async with start(events_replay_max=250) as (spindle, repo):
        assert (await spindle.trigger(repo.body(), by=repo.owner)).status_code == 200
        await add_events(spindle, 400)
        async with connect(events_url(spindle, "?cursor=0")) as websocket:
            frames = await frames_until_close(websocket)
            assert len(frames) == 250
            assert websocket.close_code == 4429
            last = frames[-1]["cursor"]
            assert (websocket.close_reason or "").endswith(f"cursor={last}")
        async with connect(events_url(spindle, f"?cursor={last}")) as websocket:
            following = json.loads(await websocket.recv())
        assert following["cursor"] > last
        await healthy(spindle)


async def test_a_watcher_that_stops_reading_is_closed_and_its_slot_freed(start: Started) -> None:
    async with start(stream_send_timeout=0.5, max_watchers_per_address=1, events_replay_max=100_000) as (
        spindle,
        repo,
    ):
        assert (await spindle.trigger(repo.body(), by=repo.owner)).status_code == 200
        await add_events(spindle, 30_000)  # about 9 MB of frames: more than the sockets buffer
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", spindle.server.port))
        sock.setblocking(False)
        # websockets stops reading the socket once 4 frames wait in its queue: we never take one.
        stalled = await connect(events_url(spindle, "?cursor=0"), sock=sock, max_queue=4)
        try:
            await wait_until_accepted(spindle)
        finally:
            stalled.transport.abort()
        await healthy(spindle)
