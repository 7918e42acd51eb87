"""/events: sh.tangled.pipeline.status frames as Tangled's spindle sends them, replayed from a cursor."""

from __future__ import annotations

import json
import re
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.runs.models import Status
from tests.streams.wire import frames

TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
PIPELINE = "at://did:web:127.0.0.1%3A5555/sh.tangled.pipeline/"


async def test_events_replay_after_the_cursor_then_continue_live(service):
    first = await service.engine.pipeline("3eone", ("build", "test"))
    running = await service.engine.move(first["build"], Status.RUNNING)
    failed = await service.engine.move(first["test"], Status.FAILED, error="exit 1", exit_code=1)

    async with connect(f"{service.ws_url}/events?cursor={running - 1}") as ws:
        replayed = await frames(ws, 2)
        second = await service.engine.pipeline("3etwo")
        live = await frames(ws, 1)
        success = await service.engine.move(first["build"], Status.SUCCESS)
        later = await frames(ws, 1)

    assert [f["cursor"] for f in replayed] == [running, failed]
    assert [f["event"]["status"] for f in replayed] == ["running", "failed"]
    assert replayed[1]["event"]["error"] == "exit 1" and replayed[1]["event"]["exitCode"] == 1
    assert live[0]["event"]["pipeline"] == PIPELINE + "3etwo" and live[0]["event"]["status"] == "pending"
    assert live[0]["cursor"] > failed and second
    assert (later[0]["cursor"], later[0]["event"]["workflow"]) == (success, "build")


async def test_event_frames_have_the_tangled_shape(service):
    run = (await service.engine.pipeline("3eshape"))["ci"]
    await service.engine.move(run, Status.RUNNING)
    async with connect(f"{service.ws_url}/events?cursor=0") as ws:
        pending, running = await frames(ws, 2)

    assert set(running) == {"rkey", "nsid", "event", "cursor"}
    assert running["nsid"] == "sh.tangled.pipeline.status"
    assert TID.match(running["rkey"]) and running["rkey"] != pending["rkey"]
    event = running["event"]
    assert set(event) == {"$type", "pipeline", "workflow", "status", "createdAt"}
    assert event["$type"] == "sh.tangled.pipeline.status"
    assert (event["pipeline"], event["workflow"], event["status"]) == (PIPELINE + "3eshape", "ci", "running")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", event["createdAt"])


async def test_a_replayed_event_keeps_the_rkey_it_had_live(service):
    async with connect(f"{service.ws_url}/events") as ws:
        await service.engine.pipeline("3estable")
        live = await frames(ws, 1)
    async with connect(f"{service.ws_url}/events?cursor=0") as ws:
        replayed = await frames(ws, 1)
    assert replayed == live


async def test_events_without_a_cursor_start_with_the_next_transition(service):
    run = (await service.engine.pipeline("3elive"))["ci"]
    async with connect(f"{service.ws_url}/events") as ws:
        running = await service.engine.move(run, Status.RUNNING)
        (frame,) = await frames(ws, 1)
    assert frame["cursor"] == running and frame["event"]["status"] == "running"


async def test_events_cursor_in_unix_nanoseconds_replays_what_happened_since_then(service):
    """Tangled's appview resumes with the time it last heard from us, in nanoseconds."""
    run = (await service.engine.pipeline("3etime"))["ci"]
    since = time.time_ns()
    running = await service.engine.move(run, Status.RUNNING)
    async with connect(f"{service.ws_url}/events?cursor={since}") as ws:
        (frame,) = await frames(ws, 1)
    assert frame["cursor"] == running


@pytest.mark.usefixtures("fast_feeds")
async def test_events_include_transitions_made_by_another_process(service, other_process):
    run = (await other_process.pipeline("3eremote"))["ci"]
    async with connect(f"{service.ws_url}/events?cursor=0") as ws:
        assert (await frames(ws, 1))[0]["event"]["status"] == "pending"
        await other_process.move(run, Status.RUNNING)
        assert (await frames(ws, 1))[0]["event"]["status"] == "running"


@pytest.mark.parametrize("cursor", ["-1", "abc", "1.5", "9223372036854775808", "99999999999999999999", "١٢"])
async def test_events_refuse_a_cursor_that_is_not_a_non_negative_integer(service, cursor):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{service.ws_url}/events?cursor={cursor}"):
            pass
    assert refused.value.response.status_code == 400
    body = json.loads(refused.value.response.body)
    assert body["error"] == "InvalidRequest" and "cursor" in body["message"]
