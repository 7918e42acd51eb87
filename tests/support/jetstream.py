"""A Jetstream and a PDS for Tangled's records, speaking their real wire formats.

    jetstream = FakeJetstream()                      # serve jetstream.app with ServerThread
    jetstream.commit(did, "sh.tangled.repo", rkey, record)      # a create, sent live and stored
    jetstream.commit(did, collection, rkey, record, operation="update")
    jetstream.delete(did, collection, rkey)          # a delete: no record, as Jetstream sends it
    jetstream.drop()                                 # close every connection (a restart)
    jetstream.connections                            # each accepted one: its cursor and collections

    pds = FakePds()                                  # serve pds.app; DID documents name its URL
    pds.put(did, "sh.tangled.repo", rkey, record)    # what listRecords returns, oldest rkey first

Jetstream (github.com/bluesky-social/jetstream): `GET /subscribe?wantedCollections=<nsid>...&cursor=<µs>`
upgrades to a WebSocket of JSON events `{"did", "time_us", "kind": "commit", "commit": {"rev",
"operation", "collection", "rkey", "record", "cid"}}` (a delete has no record or cid). With a
cursor it first replays the stored events with time_us >= cursor, then sends live ones; events of
collections not wanted are not sent. `time_us` is its clock, strictly increasing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from app.streams.service import make_tid

_DROP = object()


def new_tid() -> str:
    return make_tid(time.time_ns() // 1_000, secrets.randbelow(1024))


@dataclass
class JetstreamConnection:
    cursor: int | None
    collections: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    sent: list[int] = field(default_factory=list)  # time_us of each event sent
    open: bool = True


class FakeJetstream:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.connections: list[JetstreamConnection] = []
        self.attempts = 0
        self.refuse = False
        self._lock = threading.Lock()
        self._last_us = 0
        self.app = Starlette(routes=[WebSocketRoute("/subscribe", self._subscribe)])

    # -- what the network says ---------------------------------------------------------------

    def commit(
        self,
        did: str,
        collection: str,
        rkey: str,
        record: dict[str, Any],
        *,
        operation: str = "create",
    ) -> int:
        """A create or update of a record; its time_us."""
        commit = {
            "rev": new_tid(),
            "operation": operation,
            "collection": collection,
            "rkey": rkey,
            "record": {"$type": collection, **record},
            "cid": "bafyrei" + secrets.token_hex(16),
        }
        return self._emit({"did": did, "kind": "commit", "commit": commit})

    def delete(self, did: str, collection: str, rkey: str) -> int:
        commit = {"rev": new_tid(), "operation": "delete", "collection": collection, "rkey": rkey}
        return self._emit({"did": did, "kind": "commit", "commit": commit})

    def _emit(self, event: dict[str, Any]) -> int:
        with self._lock:
            time_us = max(time.time_ns() // 1_000, self._last_us + 1)
            self._last_us = time_us
            stored = {**event, "time_us": time_us}
            self.events.append(stored)
            targets = [c for c in self.connections if c.open]
        for conn in targets:
            conn.loop.call_soon_threadsafe(conn.queue.put_nowait, stored)
        return time_us

    def drop(self) -> None:
        with self._lock:
            targets = [c for c in self.connections if c.open]
        for conn in targets:
            conn.loop.call_soon_threadsafe(conn.queue.put_nowait, _DROP)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self.connections if c.open)

    # -- the WebSocket -----------------------------------------------------------------------

    async def _subscribe(self, websocket: WebSocket) -> None:
        self.attempts += 1
        if self.refuse:
            await websocket.close(code=1008)
            return
        raw = websocket.query_params.get("cursor", "")
        cursor = int(raw) if raw.isdigit() else None
        wanted = tuple(websocket.query_params.getlist("wantedCollections"))
        conn = JetstreamConnection(cursor, wanted, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            backlog = [e for e in self.events if cursor is not None and e["time_us"] >= cursor]
            self.connections.append(conn)
        try:
            await websocket.accept()
            for event in backlog:
                await self._send(websocket, conn, event)
            while True:
                item = await conn.queue.get()
                if item is _DROP:
                    break
                await self._send(websocket, conn, item)
        except Exception:
            pass
        finally:
            with self._lock:
                conn.open = False
            with contextlib.suppress(Exception):
                await websocket.close(code=1012)

    @staticmethod
    async def _send(websocket: WebSocket, conn: JetstreamConnection, event: dict[str, Any]) -> None:
        collection = event.get("commit", {}).get("collection")
        if conn.collections and collection not in conn.collections:
            return
        await websocket.send_text(json.dumps(event))
        conn.sent.append(event["time_us"])


class FakePds:
    """`com.atproto.repo.listRecords` over the records `put` here, paged by rkey as a PDS pages."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.requests: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/xrpc/com.atproto.repo.listRecords", self._list)])

    def put(self, did: str, collection: str, rkey: str, record: dict[str, Any]) -> None:
        self.records.setdefault((did, collection), {})[rkey] = {"$type": collection, **record}

    async def _list(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.requests.append(params)
        did, collection = params.get("repo", ""), params.get("collection", "")
        limit = int(params.get("limit", "50"))
        after = params.get("cursor", "")
        records = self.records.get((did, collection), {})
        keys = sorted(k for k in records if k > after)[:limit]
        body: dict[str, Any] = {
            "records": [
                {
                    "uri": f"at://{did}/{collection}/{key}",
                    "cid": "bafyrei" + secrets.token_hex(16),
                    "value": records[key],
                }
                for key in keys
            ]
        }
        if len(keys) == limit:
            body["cursor"] = keys[-1]
        return JSONResponse(body)
