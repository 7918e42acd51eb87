"""XRPC subscription frames (https://atproto.com/specs/event-stream): a DAG-CBOR header, then a
DAG-CBOR body, in one binary WebSocket message.

    message: {"op": 1, "t": "#data"}  {...the #data object, without $type...}
    error:   {"op": -1}                {"error": "PipelineNotFound", "message": "..."}

and the log lines of subscribePipelineLogs as its `#control` and `#data` messages, shaped as
Tangled's spindle sends them (a data line's content ends in a newline; a control line's `kind`
says `system` or `user`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import libipld

from app.streams.service import format_datetime, step_kind

NO_STEP = -1  # a line outside any step (the spindle's own notices); Tangled's setup step is -1 too


def message(kind: str, body: Mapping[str, Any]) -> bytes:
    """A message frame of type `#<kind>`."""
    return bytes(libipld.encode_dag_cbor({"op": 1, "t": f"#{kind}"})) + bytes(
        libipld.encode_dag_cbor(dict(body))
    )


def error(name: str, text: str) -> bytes:
    """An error frame; the stream is closed after it."""
    return bytes(libipld.encode_dag_cbor({"op": -1})) + bytes(
        libipld.encode_dag_cbor({"error": name, "message": text})
    )


def log_message(workflow: str, item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A stored log item as a (`control`|`data`, body) message of `workflow`."""
    step = item.get("step_id")
    body: dict[str, Any] = {
        "time": format_datetime(item["time"]),
        "workflow": workflow,
        "step": NO_STEP if step is None else int(step),
    }
    content = item.get("content") or ""
    if item.get("kind") == "control":
        body["content"] = content
        if item.get("step_command"):
            body["command"] = item["step_command"]
        if item.get("step_status") in ("start", "end"):
            body["status"] = item["step_status"]
        body["kind"] = step_kind(item)
        return "control", body
    body["content"] = content + "\n"  # stored without its newline, as Tangled's logger trims it
    body["stream"] = item.get("stream") if item.get("stream") in ("stdout", "stderr") else "stdout"
    return "data", body
