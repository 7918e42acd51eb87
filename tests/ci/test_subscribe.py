"""sh.tangled.ci.subscribePipelineLogs: a live run on Podman, streamed to its end as atproto
event-stream frames (a DAG-CBOR header, then a DAG-CBOR body), decoded by the atproto SDK."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from atproto_subscription.frames import ErrorFrame, Frame, MessageFrame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from app.ci import frames, schemas
from tests.ci.conftest import Served, valid_message, valid_output
from tests.runs.conftest import Identity
from tests.streams.wire import PATIENCE

LIVE = """\
on: workflow_dispatch
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - name: say hello
        run: |
          echo hello from the runner
          echo to stderr >&2
      - run: echo second step
"""


def ws_url(served: Served, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for key, values in params.items() for k, v in ((key, x) for x in values))
    return f"ws://{served.spindle.server.host}/xrpc/{schemas.SUBSCRIBE_NSID}?{query}"


async def messages_until_closed(ws: ClientConnection) -> list[tuple[str, dict[str, Any]]]:
    """Every frame, decoded and checked against the lexicon, until the server closes normally."""
    out = []
    async with asyncio.timeout(PATIENCE * 6):  # a guard against hangs: the job runs on Podman
        async for raw in ws:
            assert isinstance(raw, bytes), "subscription frames are binary"
            frame = Frame.from_bytes(raw)
            assert isinstance(frame, MessageFrame), frame
            kind = (frame.header.t or "").lstrip("#")
            out.append((kind, valid_message(schemas.SUBSCRIBE_NSID, kind, frame.body)))
    return out


async def test_streams_a_live_run_to_its_end(served: Served, alice: Identity):
    sha = served.git.commit({".github/workflows/ci.yml": None, ".github/workflows/lint.yaml": None})
    served.sha = served.git.commit({".github/workflows/live.yml": LIVE})
    assert sha != served.sha
    answer = (await served.trigger(alice)).json()
    tid = answer["pipeline"].rsplit("/", 1)[1]

    async with connect(ws_url(served, pipeline=[tid])) as ws:
        messages = await messages_until_closed(ws)
        assert ws.close_code == 1000

    controls = [body for kind, body in messages if kind == "control"]
    data = [body for kind, body in messages if kind == "data"]
    assert {body["workflow"] for _, body in messages} == {"live"}
    starts = [c for c in controls if c.get("status") == "start"]
    assert [c["content"] for c in starts] == ["say hello", "Run echo second step"]
    assert all(c["kind"] == "user" for c in starts)
    assert [c.get("status") for c in controls if c["content"] == "say hello"] == ["start", "end"]
    first_step = starts[0]["step"]
    lines = [(d["stream"], d["content"]) for d in data if d["step"] == first_step]
    assert ("stdout", "hello from the runner\n") in lines and ("stderr", "to stderr\n") in lines
    # The spindle's own notices come outside any step.
    assert any(d["step"] == -1 and d["content"].startswith("spindle: ") for d in data)
    # It ended because the run did: the pipeline says so.
    pipeline = (await served.query(schemas.GET_NSID, {"pipeline": tid})).json()
    assert [w["status"] for w in valid_output(schemas.GET_NSID, pipeline)["workflows"]] == ["success"]


async def test_a_finished_pipeline_streams_its_whole_log_then_closes(served: Served, alice: Identity):
    tid = (await served.trigger(alice, workflows=["ci"])).json()["pipeline"].rsplit("/", 1)[1]
    async with connect(ws_url(served, pipeline=[tid], workflows=["ci"])) as ws:
        first = await messages_until_closed(ws)
    async with connect(ws_url(served, pipeline=[tid])) as ws:
        again = await messages_until_closed(ws)
    assert first and first == again
    assert {body["workflow"] for _, body in first} == {"ci"}


async def test_an_unknown_pipeline_is_refused_with_pipeline_not_found(served: Served):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(served, pipeline=["3lzzzzzzzzzzz"])):
            pass
    assert refused.value.response.status_code == 404
    assert b"PipelineNotFound" in refused.value.response.body


async def test_an_unknown_workflow_is_refused_with_workflow_not_found(served: Served, alice: Identity):
    tid = (await served.trigger(alice)).json()["pipeline"].rsplit("/", 1)[1]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(served, pipeline=[tid], workflows=["deploy"])):
            pass
    assert refused.value.response.status_code == 404
    assert b"WorkflowNotFound" in refused.value.response.body


async def test_a_pipeline_id_that_is_not_a_tid_is_refused(served: Served):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(served, pipeline=["not-a-tid"])):
            pass
    assert refused.value.response.status_code == 400
    assert b"InvalidRequest" in refused.value.response.body


def test_an_error_frame_decodes_as_one():
    frame = Frame.from_bytes(frames.error("PipelineNotFound", "no pipeline 3l"))
    assert isinstance(frame, ErrorFrame) and frame.body.error == "PipelineNotFound"
