"""A pipeline's status: every workflow's document as JSON, or one SSE stream of all their transitions."""

from __future__ import annotations

import httpx
import pytest

from app.runs.models import Status
from tests.streams.runs import KNOT
from tests.streams.wire import PATIENCE, sse_events

SSE = {"Accept": "text/event-stream"}


def pipeline_path(rkey: str, knot: str = KNOT) -> str:
    return f"/status/{knot}/{rkey}"


def seen(events: list[dict]) -> list[tuple[int, str, str]]:
    """(event id, workflow, status) of each SSE event."""
    return [(int(e["id"]), e["data"]["workflow"], e["data"]["status"]) for e in events]


async def test_pipeline_status_json_holds_the_document_each_workflow_url_answers(service):
    runs = await service.engine.pipeline("3pjson", ("build", "test", "lint"))
    await service.engine.move(runs["build"], Status.RUNNING)
    await service.engine.move(runs["test"], Status.RUNNING)
    await service.engine.move(runs["build"], Status.SUCCESS, exit_code=0)
    await service.engine.move(runs["test"], Status.FAILED, error="step 1 exited with 2", exit_code=2)

    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get(pipeline_path("3pjson"))
        doc = response.json()
        # Two segments after /status name the pipeline, three a workflow: neither route hides the other.
        each = [(await client.get(workflow["statusUrl"])).json() for workflow in doc["workflows"]]

    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert doc == {"knot": KNOT, "pipelineRkey": "3pjson", "workflows": each}
    assert [(w["workflow"], w["status"]) for w in each] == [
        ("build", "success"),
        ("test", "failed"),
        ("lint", "pending"),
    ]
    assert [e["status"] for e in each[1]["events"]] == ["pending", "running", "failed"]
    assert each[1]["error"] == "step 1 exited with 2" and each[1]["exitCode"] == 2


@pytest.mark.parametrize("headers", [{}, SSE], ids=["json", "sse"])
@pytest.mark.parametrize(
    "path",
    [pipeline_path("3pnone"), pipeline_path("3pknown", knot="127.0.0.1:5556")],
    ids=["unknown rkey", "rkey of another knot"],
)
async def test_status_of_an_unknown_pipeline_is_a_404_not_found(service, path, headers):
    await service.engine.pipeline("3pknown")
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get(path, headers=headers)
    assert response.status_code == 404
    assert response.json()["error"] == "NotFound"
    assert "3p" in response.json()["message"]


async def test_pipeline_stream_starts_with_every_workflows_current_status(service):
    runs = await service.engine.pipeline("3phistory", ("build", "test", "lint"))
    running = await service.engine.move(runs["test"], Status.RUNNING)
    failed = await service.engine.move(runs["lint"], Status.FAILED, error="bad", exit_code=1)

    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", pipeline_path("3phistory"), headers=SSE) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            first = [await anext(events) for _ in range(3)]

    # The latest transition of each workflow, oldest first: build is still at its pending event.
    assert seen(first) == [(1, "build", "pending"), (running, "test", "running"), (failed, "lint", "failed")]
    assert first[2]["data"] == {
        "id": failed,
        "status": "failed",
        "error": "bad",
        "exitCode": 1,
        "createdAt": first[2]["data"]["createdAt"],
        "workflow": "lint",
        "pipelineRkey": "3phistory",
        "knot": KNOT,
        "pipeline": "at://did:web:127.0.0.1%3A5555/sh.tangled.pipeline/3phistory",
    }


async def test_pipeline_stream_interleaves_two_workflows_and_ends_only_when_both_finished(service):
    runs = await service.engine.pipeline("3plive", ("build", "test"))

    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", pipeline_path("3plive"), headers=SSE) as response:
            events = sse_events(response)
            history = [await anext(events) for _ in range(2)]
            moves = [
                ("build", Status.RUNNING),
                ("test", Status.RUNNING),
                ("build", Status.SUCCESS),  # one finished: the stream goes on for the other
                ("test", Status.FAILED),
            ]
            ids = [await service.engine.move(runs[name], status) for name, status in moves]
            live = [event async for event in events]

    assert seen(history) == [(1, "build", "pending"), (2, "test", "pending")]
    assert seen(live) == [(i, name, status.value) for i, (name, status) in zip(ids, moves, strict=True)]


async def test_pipeline_stream_of_a_finished_pipeline_sends_the_final_statuses_and_ends(service):
    runs = await service.engine.pipeline("3pdone", ("build", "test"))
    cancelled = await service.engine.move(runs["test"], Status.CANCELLED)
    timed_out = await service.engine.move(runs["build"], Status.TIMEOUT, error="took too long")

    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", pipeline_path("3pdone"), headers=SSE) as response:
            events = [event async for event in sse_events(response)]

    assert seen(events) == [(cancelled, "test", "cancelled"), (timed_out, "build", "timeout")]
    assert events[1]["data"]["error"] == "took too long"


async def test_pipeline_stream_resumes_after_last_event_id_across_workflows(service):
    runs = await service.engine.pipeline("3presume", ("build", "test"))
    build_running = await service.engine.move(runs["build"], Status.RUNNING)
    test_running = await service.engine.move(runs["test"], Status.RUNNING)
    build_success = await service.engine.move(runs["build"], Status.SUCCESS)

    headers = {**SSE, "Last-Event-ID": str(build_running)}
    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", pipeline_path("3presume"), headers=headers) as response:
            events = sse_events(response)
            missed = [await anext(events) for _ in range(2)]
            test_cancelled = await service.engine.move(runs["test"], Status.CANCELLED)
            live = [event async for event in events]

    assert seen(missed) == [(test_running, "test", "running"), (build_success, "build", "success")]
    assert seen(live) == [(test_cancelled, "test", "cancelled")]


async def test_pipeline_stream_resumed_after_every_final_status_tells_the_client_to_stop(service):
    runs = await service.engine.pipeline("3pended", ("build", "test"))
    await service.engine.move(runs["build"], Status.SUCCESS)
    last = await service.engine.move(runs["test"], Status.FAILED)

    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        stop = await client.get(pipeline_path("3pended"), headers={**SSE, "Last-Event-ID": str(last)})
        async with client.stream(
            "GET", pipeline_path("3pended"), headers={**SSE, "Last-Event-ID": str(last - 1)}
        ) as response:
            rest = [event async for event in sse_events(response)]

    assert stop.status_code == 204
    assert seen(rest) == [(last, "test", "failed")]


@pytest.mark.parametrize(
    "last_event_id", ["²".encode(), "9" * 30, "-1", "abc"], ids=["superscript", "huge", "negative", "letters"]
)
async def test_pipeline_stream_with_a_last_event_id_we_never_sent_starts_over(service, last_event_id):
    await service.engine.pipeline("3pstrange", ("build", "test"))
    headers = {**SSE, "Last-Event-ID": last_event_id}
    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", pipeline_path("3pstrange"), headers=headers) as response:
            events = sse_events(response)
            first = [await anext(events) for _ in range(2)]
    assert response.status_code == 200
    assert seen(first) == [(1, "build", "pending"), (2, "test", "pending")]


@pytest.mark.usefixtures("fast_feeds")
async def test_pipeline_stream_follows_transitions_another_process_commits(service, other_process):
    runs = await other_process.pipeline("3premote", ("build", "test"))
    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", pipeline_path("3premote"), headers=SSE) as response:
            events = sse_events(response)
            assert [e["data"]["status"] for e in [await anext(events), await anext(events)]] == [
                "pending",
                "pending",
            ]
            moves = [
                ("test", Status.RUNNING),
                ("build", Status.RUNNING),
                ("test", Status.SUCCESS),
                ("build", Status.FAILED),
            ]
            ids = [await other_process.move(runs[name], status) for name, status in moves]
            rest = seen([event async for event in events])
    # Each workflow's transitions in order; across workflows, in whichever order the polls found them.
    expected = [(i, name, status.value) for i, (name, status) in zip(ids, moves, strict=True)]
    assert sorted(rest) == expected
    for name in ("build", "test"):
        assert [item for item in rest if item[1] == name] == [item for item in expected if item[1] == name]
