"""A run's status: JSON with its URLs and transitions, and Server-Sent Events until it finishes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.runs.models import Status
from tests.streams.runs import KNOT
from tests.streams.wire import PATIENCE, sse_events

SSE = {"Accept": "text/event-stream"}


def status_path(rkey: str, workflow: str = "ci") -> str:
    return f"/status/{KNOT}/{rkey}/{workflow}"


async def test_status_json_of_a_failed_run_has_its_error_urls_and_every_transition(service):
    run = (await service.engine.pipeline("3sfailed", ("ci", "lint")))["ci"]
    pending = 1
    running = await service.engine.move(run, Status.RUNNING)
    failed = await service.engine.move(run, Status.FAILED, error="step 2 exited with 3", exit_code=3)

    async with httpx.AsyncClient(base_url=service.url) as client:
        doc = (await client.get(status_path("3sfailed"))).json()

    base, ws = service.url, service.ws_url
    assert doc["status"] == "failed" and doc["error"] == "step 2 exited with 3" and doc["exitCode"] == 3
    assert (doc["workflow"], doc["pipelineRkey"], doc["knot"]) == ("ci", "3sfailed", KNOT)
    assert doc["pipeline"] == "at://did:web:127.0.0.1%3A5555/sh.tangled.pipeline/3sfailed"
    assert doc["logsUrl"] == f"{ws}/logs/{KNOT}/3sfailed/ci"
    assert doc["statusUrl"] == f"{base}/status/{KNOT}/3sfailed/ci"
    assert doc["runUrl"] == f"{base}/runs/{KNOT}/3sfailed"
    assert doc["createdAt"] <= doc["startedAt"] <= doc["finishedAt"]
    assert [(e["id"], e["status"]) for e in doc["events"]] == [
        (pending, "pending"),
        (running, "running"),
        (failed, "failed"),
    ]
    assert doc["events"][-1] == {
        "id": failed,
        "status": "failed",
        "error": "step 2 exited with 3",
        "exitCode": 3,
        "createdAt": doc["finishedAt"],
    }


async def test_status_json_of_a_pending_run_leaves_out_error_and_exit_code(service):
    await service.engine.pipeline("3spending")
    async with httpx.AsyncClient(base_url=service.url) as client:
        doc = (await client.get(status_path("3spending"))).json()
    assert doc["status"] == "pending"
    assert "error" not in doc and "exitCode" not in doc
    assert doc["startedAt"] is None and doc["finishedAt"] is None
    assert [e["status"] for e in doc["events"]] == ["pending"]


@pytest.mark.parametrize("path", [status_path("3snone"), status_path("3sknown", "deploy")])
async def test_status_of_an_unknown_run_is_a_404_not_found(service, path):
    await service.engine.pipeline("3sknown")
    async with httpx.AsyncClient(base_url=service.url) as client:
        for headers in ({}, SSE):
            response = await client.get(path, headers=headers)
            assert response.status_code == 404
            assert response.json()["error"] == "NotFound"


async def test_status_stream_sends_the_current_status_then_each_transition_and_ends(service):
    run = (await service.engine.pipeline("3sstream"))["ci"]
    running = await service.engine.move(run, Status.RUNNING)

    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", status_path("3sstream"), headers=SSE) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            first = await anext(events)
            cancelled = await service.engine.move(run, Status.CANCELLED)
            rest = [event async for event in events]

    assert first["id"] == str(running) and first["data"]["status"] == "running"
    assert first["data"]["workflow"] == "ci" and first["data"]["knot"] == KNOT
    assert [(e["id"], e["data"]["status"]) for e in rest] == [(str(cancelled), "cancelled")]


async def test_status_stream_resumes_after_last_event_id(service):
    run = (await service.engine.pipeline("3sresume"))["ci"]
    running = await service.engine.move(run, Status.RUNNING)
    success = await service.engine.move(run, Status.SUCCESS)
    headers = {**SSE, "Last-Event-ID": "1"}
    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", status_path("3sresume"), headers=headers) as response:
            events = [event async for event in sse_events(response)]
    assert [(e["id"], e["data"]["status"]) for e in events] == [
        (str(running), "running"),
        (str(success), "success"),
    ]


async def test_status_stream_tells_a_reconnecting_client_of_a_finished_run_to_stop(service):
    run = (await service.engine.pipeline("3sended"))["ci"]
    finished = await service.engine.move(run, Status.TIMEOUT)
    headers = {**SSE, "Last-Event-ID": str(finished)}
    async with httpx.AsyncClient(base_url=service.url) as client:
        response = await client.get(status_path("3sended"), headers=headers)
    assert response.status_code == 204


async def test_status_stream_of_a_finished_run_sends_its_final_status_and_ends(service):
    run = (await service.engine.pipeline("3sfinal"))["ci"]
    await service.engine.move(run, Status.RUNNING)
    failed = await service.engine.move(run, Status.FAILED, error="boom", exit_code=1)
    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", status_path("3sfinal"), headers=SSE) as response:
            events = [event async for event in sse_events(response)]
    assert [e["data"] for e in events] == [
        {
            "id": failed,
            "status": "failed",
            "error": "boom",
            "exitCode": 1,
            "createdAt": events[0]["data"]["createdAt"],
            "workflow": "ci",
            "pipelineRkey": "3sfinal",
            "knot": KNOT,
            "pipeline": "at://did:web:127.0.0.1%3A5555/sh.tangled.pipeline/3sfinal",
        }
    ]


async def test_status_stream_sends_keep_alive_comments_while_nothing_happens(service, monkeypatch):
    monkeypatch.setattr("app.streams.router.KEEPALIVE_SECONDS", 0.05)
    await service.engine.pipeline("3squiet")
    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", status_path("3squiet"), headers=SSE) as response:
            events = sse_events(response)
            assert (await anext(events))["data"]["status"] == "pending"
            async with asyncio.timeout(PATIENCE):
                assert await anext(events) == {"comment": "keep-alive"}


@pytest.mark.usefixtures("fast_feeds")
async def test_status_stream_follows_transitions_made_by_another_process(service, other_process):
    run = (await other_process.pipeline("3sremote"))["ci"]
    async with httpx.AsyncClient(base_url=service.url, timeout=PATIENCE) as client:
        async with client.stream("GET", status_path("3sremote"), headers=SSE) as response:
            events = sse_events(response)
            assert (await anext(events))["data"]["status"] == "pending"
            await other_process.move(run, Status.RUNNING)
            await other_process.move(run, Status.SUCCESS)
            rest = [event["data"]["status"] async for event in events]
    assert rest == ["running", "success"]
