"""Clients for the stream endpoints as a watcher uses them: WebSocket frames and SSE events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

# A guard against hangs, never an assertion about speed.
PATIENCE = 20.0


async def frames(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` JSON frames."""
    async with asyncio.timeout(PATIENCE):
        return [json.loads(await ws.recv()) for _ in range(count)]


async def frames_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every JSON frame until the server closes normally (a non-normal close raises)."""
    async with asyncio.timeout(PATIENCE):
        return [json.loads(message) async for message in ws]


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The events of a text/event-stream: {"id", "data"} for events, {"comment"} for comments."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in event:  # as in browsers, a block without data (e.g. `retry:`) is no event
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[field] = json.loads(value) if field == "data" else value
