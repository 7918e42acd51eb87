"""The log of a run: a WebSocket of Tangled log lines (history, live, close), and plain text."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.runs.models import Status
from tests.streams.runs import KNOT, data, step
from tests.streams.wire import PATIENCE, frames, frames_until_closed

TANGLED_FIELDS = {"kind", "content", "time", "step_id", "stream", "step_status", "step_command", "step_kind"}
GO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def logs_path(rkey: str, workflow: str = "ci") -> str:
    return f"/logs/{KNOT}/{rkey}/{workflow}"


async def test_log_socket_sends_history_then_live_lines_then_closes_when_the_run_finishes(service):
    runs = await service.engine.pipeline("3lhistory")
    run = runs["ci"]
    await service.engine.move(run, Status.RUNNING)
    await service.engine.lines(run, [step(1, "build", command="make all"), data("one"), data("two")])

    async with connect(service.ws_url + logs_path("3lhistory")) as ws:
        history = await frames(ws, 3)
        await service.engine.lines(run, [data("three", stream="stderr")])
        live = await frames(ws, 1)
        await service.engine.lines(run, [step(1, "build", "end")])
        await service.engine.move(run, Status.SUCCESS)
        rest = await frames_until_closed(ws)
        assert ws.close_code == 1000

    assert [f["content"] for f in history] == ["build", "one", "two"]
    assert live[0]["content"] == "three" and live[0]["stream"] == "stderr"
    assert [(f["kind"], f["step_status"]) for f in rest] == [("control", "end")]


async def test_log_lines_have_the_tangled_spindle_fields_and_time_format(service):
    run = (await service.engine.pipeline("3lformat"))["ci"]
    await service.engine.move(run, Status.RUNNING)
    await service.engine.lines(run, [step(2, "test", command="pytest -q"), data("passed", step_id=2)])
    await service.engine.move(run, Status.SUCCESS)

    async with connect(service.ws_url + logs_path("3lformat")) as ws:
        control, line = await frames_until_closed(ws)

    assert set(control) == TANGLED_FIELDS and set(line) == TANGLED_FIELDS
    assert control["kind"] == "control" and control["step_id"] == 2
    assert control["step_status"] == "start" and control["step_command"] == "pytest -q"
    assert line == {
        "kind": "data",
        "content": "passed",
        "time": line["time"],
        "step_id": 2,
        "stream": "stdout",
        "step_status": None,
        "step_command": None,
        "step_kind": 1,
    }
    assert control["step_kind"] == 1  # a step of the workflow: Tangled's StepKindUser
    assert GO_TIME.match(line["time"]) and GO_TIME.match(control["time"])


async def test_a_finished_run_gives_its_whole_log_over_the_socket_and_as_text(service):
    run = (await service.engine.pipeline("3ldone"))["ci"]
    await service.engine.move(run, Status.RUNNING)
    await service.engine.lines(run, [data(f"line {i}") for i in range(1500)])
    await service.engine.move(run, Status.FAILED, error="exit status 2", exit_code=2)

    async with connect(service.ws_url + logs_path("3ldone")) as ws:
        lines = await frames_until_closed(ws)
        assert ws.close_code == 1000
    async with httpx.AsyncClient(base_url=service.url) as client:
        text = (await client.get(logs_path("3ldone"))).text

    assert [f["content"] for f in lines] == [f"line {i}" for i in range(1500)]
    assert text.splitlines() == [f"line {i}" for i in range(1500)]


@pytest.mark.usefixtures("fast_feeds")
async def test_log_socket_follows_a_run_that_another_process_executes(service, other_process):
    run = (await other_process.pipeline("3lremote"))["ci"]
    await other_process.move(run, Status.RUNNING)
    await other_process.lines(run, [data("before")])

    async with connect(service.ws_url + logs_path("3lremote")) as ws:
        assert [f["content"] for f in await frames(ws, 1)] == ["before"]
        await other_process.lines(run, [data("during 1"), data("during 2")])
        assert [f["content"] for f in await frames(ws, 2)] == ["during 1", "during 2"]
        await other_process.lines(run, [data("last")])
        await other_process.move(run, Status.SUCCESS)
        assert [f["content"] for f in await frames_until_closed(ws)] == ["last"]
        assert ws.close_code == 1000


async def test_log_socket_of_an_unknown_run_is_refused_with_404(service):
    await service.engine.pipeline("3lknown")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(service.ws_url + logs_path("3lknown", "nightly")):
            pass
    assert refused.value.response.status_code == 404
    body = json.loads(refused.value.response.body)
    assert body["error"] == "NotFound" and "nightly" in body["message"]


async def test_many_watchers_of_one_run_each_get_every_line_once(service):
    run = (await service.engine.pipeline("3lmany"))["ci"]
    await service.engine.move(run, Status.RUNNING)
    sockets = [await connect(service.ws_url + logs_path("3lmany")).__aenter__() for _ in range(20)]
    try:
        for batch in range(5):
            await service.engine.lines(run, [data(f"{batch}.{i}") for i in range(3)])
        await service.engine.move(run, Status.SUCCESS)
        received = [[f["content"] for f in await frames_until_closed(ws)] for ws in sockets]
    finally:
        for ws in sockets:
            await ws.close()
    expected = [f"{b}.{i}" for b in range(5) for i in range(3)]
    assert received == [expected] * 20


async def test_plain_get_of_the_log_is_text_with_steps_marked(service):
    run = (await service.engine.pipeline("3ltext"))["ci"]
    await service.engine.move(run, Status.RUNNING)
    await service.engine.lines(
        run,
        [
            step(1, "build", command="make\nmake install"),
            data("<b>compiled</b>"),
            data("warning", stream="stderr"),
            step(1, "build", "end"),
        ],
    )
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get(logs_path("3ltext"))

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == (
        "▶ step 1: build\n  $ make\n  $ make install\n<b>compiled</b>\nwarning\n■ end of step 1: build\n"
    )


async def test_plain_get_of_an_unknown_log_is_a_404_not_found(service):
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get(logs_path("3lnothing"))
    assert response.status_code == 404
    assert response.json()["error"] == "NotFound"


async def test_a_watcher_that_leaves_releases_its_subscription_and_feeds(service):
    run = (await service.engine.pipeline("3lleave"))["ci"]
    await service.engine.move(run, Status.RUNNING)
    await service.engine.lines(run, [data("hello")])
    async with connect(service.ws_url + logs_path("3lleave")) as ws:
        await frames(ws, 1)

    async def released() -> None:
        feeds = service.ctx.extras["stream_feeds"]
        while service.ctx.broker.subscriber_count(("logs", run)) or feeds.active():
            await asyncio.sleep(0.01)

    async with asyncio.timeout(PATIENCE):
        await service.server.call(released())
