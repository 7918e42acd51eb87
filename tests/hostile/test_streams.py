"""Hostile requests to the status, logs and events URLs of a real run: 4xx or a clean answer, never 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
import pytest_asyncio

from tests.hostile.conftest import Hostile, assert_xrpc_error

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run_path(hostile: Hostile) -> AsyncIterator[str]:
    """`{knot}/{rkey}/ci` of a triggered run (its job is `if: false`: it finishes at once)."""
    body = hostile.repo.body()
    response = await hostile.spindle.trigger(body, by=hostile.alice)
    assert response.status_code == 200, response.text
    yield f"{body['knot']}/{body['pipelineRkey']}/ci"


# Header bytes are read as latin-1: b"\xb2" is "²", which str.isdigit() calls a digit but int() refuses.
LAST_EVENT_IDS = [b"\xb2", b"\xd9\xa3", b"1" * 5000, b"-1", b"0x10", b"1e9", b"99999999999999999999999"]


@pytest.mark.parametrize(
    "last_event_id", LAST_EVENT_IDS, ids=lambda v: repr(v[:12]) + (f"+{len(v) - 12}" if len(v) > 12 else "")
)
async def test_a_status_stream_with_a_strange_last_event_id_does_not_fail(
    hostile: Hostile, run_path: str, last_event_id: bytes
):
    async with hostile.spindle.client.stream(
        "GET",
        f"/status/{run_path}",
        headers={"accept": "text/event-stream", "last-event-id": last_event_id},
    ) as response:
        body = (await response.aread()).decode()

    assert response.status_code in (200, 204), body
    if response.status_code == 200:
        assert '"status"' in body


@pytest.mark.parametrize(
    "path",
    [
        "/status/" + "k" * 10_000 + "/r/ci",
        "/status/127.0.0.1%3A1/" + quote("../../etc/passwd", safe="") + "/ci",
        "/status/%00/%00/%00",
        "/status/" + quote("\ud800", safe="", errors="surrogatepass") + "/r/ci",
        "/logs/%ff%fe/r/ci",
        "/logs/" + "k" * 10_000 + "/r/ci",
        "/runs/%c0%ae%c0%ae/x",
    ],
    ids=["long-knot", "dot-dot-rkey", "nul", "surrogate", "bad-utf8", "long-logs", "overlong-utf8"],
)
async def test_a_strange_stream_path_is_a_clean_404(hostile: Hostile, path: str):
    response = await hostile.spindle.client.get(path)

    assert response.status_code in (400, 404), response.text
    if not path.startswith("/runs/"):
        assert_xrpc_error(response, response.status_code)


@pytest.mark.parametrize("cursor", ["²", "-1", "9" * 30, "1.5", "%00", "0x10", " 1"])
async def test_an_events_socket_with_a_strange_cursor_is_refused_with_400(hostile: Hostile, cursor: str):
    response = await hostile.spindle.client.get(
        "/events",
        params={"cursor": cursor},
        headers={
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )

    assert_xrpc_error(response, 400, "InvalidRequest")
