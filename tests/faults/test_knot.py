"""A registered knot that misbehaves below HTTP: 502 UpstreamFailure, nothing recorded, never a hang.

tests/runs/test_trigger_knot.py covers a knot that is down, hangs, or answers 5xx or non-JSON
through the test knot's knobs; these knots are raw TCP servers that break the protocol itself:
closing mid-answer, resetting, trickling bytes, lying about lengths, or sending a gzip bomb.
The service's knot timeout is 1 s here, so "never a hang" is cheap to check.
"""

from __future__ import annotations

import asyncio
import gzip
import resource
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from app.runs.models import Pipeline, WorkflowRun
from tests.conftest import OWNER_DID  # noqa: F401  (the service's owner in hostile_settings)
from tests.hostile.conftest import Hostile, assert_xrpc_error, hostile_settings, quiet_events
from tests.runs.conftest import CI_YML, KnotRepo, new_identity, serve
from tests.support.db import new_database
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# 64 MiB of zeros compress to ~64 KiB: decoded in full it would be 64 times the response limit.
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


class RawKnot:
    """A TCP server on loopback whose every connection is handled by `handler` (in its own thread)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self.handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._ready.set()
        await self._stop.wait()
        server.close()
        # Handlers still sleeping (a knot that never answers) end with the server.
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def __enter__(self) -> RawKnot:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)


async def half_a_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await writer.drain()
    await asyncio.sleep(30)


async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # A byte every 0.2 s never trips a per-read timeout; only a deadline for the whole answer does.
    writer.write(head(Content_Type="application/json", Content_Length="100000"))
    for _ in range(150):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.2)


async def short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(head(Content_Type="application/json", Content_Length="100") + b'{"files": [')
    await writer.drain()


async def huge_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    size = 8 * 1024 * 1024
    writer.write(head(Content_Type="application/json", Content_Length=str(size)))
    chunk = b" " * 65536
    for _ in range(size // len(chunk)):
        writer.write(chunk)
        await writer.drain()


async def endless_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(head(Content_Type="application/json", Transfer_Encoding="chunked"))
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    for _ in range(1024):
        writer.write(chunk)
        await writer.drain()


async def gzip_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        head(Content_Type="application/json", Content_Encoding="gzip", Content_Length=str(len(BOMB))) + BOMB
    )
    await writer.drain()


async def bad_gzip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b"definitely not gzip"
    writer.write(
        head(Content_Type="application/json", Content_Encoding="gzip", Content_Length=str(len(body)))
    )
    writer.write(body)
    await writer.drain()


async def invalid_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 999999 Whatever\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()


CASES: list[tuple[str, Handler, str]] = [
    ("closes-at-once", close_at_once, "unreachable"),
    ("never-answers", never_answer, "did not answer"),
    ("resets", reset, "unreachable"),
    ("not-http", not_http, "unreachable"),
    ("half-a-head", half_a_head, "did not answer"),
    ("drips-bytes", drip, "did not answer"),
    ("body-shorter-than-declared", short_body, "unreachable"),
    ("eight-mib-body", huge_body, "oversized"),
    ("endless-chunks", endless_chunks, "oversized"),
    ("gzip-bomb", gzip_bomb, "oversized"),
    ("broken-gzip", bad_gzip, "unreachable"),
    ("invalid-status-code", invalid_status, "unreachable"),
]


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("knot-faults")
    new_database("sqlite", tmp)
    return tmp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(plc: FakePlc, module_tmp: Path) -> AsyncIterator[Hostile]:
    from starlette.routing import WebSocketRoute

    port = free_port()
    alice = new_identity(plc)
    bob = new_identity(plc, "ES256")
    with TestKnot(module_tmp / "knot", routes=[WebSocketRoute("/events", quiet_events)]) as knot:
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        async with serve(hostile_settings(plc, module_tmp, port, knot_timeout=1.0), port) as spindle:
            await spindle.register(knot=knot.host, did=alice.did, name="hello")
            yield Hostile(spindle, KnotRepo(knot, git, sha, alice), bob, plc, module_tmp)


@pytest.fixture
def peak_rss() -> Iterator[None]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize(("handler", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_knot_breaking_the_protocol_is_upstream_failure_and_records_nothing(
    env: Hostile, peak_rss: None, handler: Handler, fragment: str
):
    with RawKnot(handler) as raw:
        name = "raw" + str(raw.port)
        await env.spindle.register(knot=raw.host, did=env.alice.did, name=name)
        before = (await env.spindle.count(Pipeline), await env.spindle.count(WorkflowRun))

        async with asyncio.timeout(20):  # the knot timeout is 1 s: anything near this is a hang
            response = await env.spindle.trigger(env.repo.body(knot=raw.host, repoName=name), by=env.alice)

    body = assert_xrpc_error(response, 502, "UpstreamFailure")
    assert fragment in body["message"], body
    assert raw.host in body["message"], body
    assert (await env.spindle.count(Pipeline), await env.spindle.count(WorkflowRun)) == before


async def test_the_service_still_triggers_from_a_healthy_knot_afterwards(env: Hostile):
    response = await env.spindle.trigger(env.repo.body(), by=env.alice)

    assert response.status_code == 200, response.text
