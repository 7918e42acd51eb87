"""A knot's `/events` WebSocket for a TestKnot, Tangled pipeline events, and a knot that never answers.

    stream = KnotEventStream.attach(knot)               # ws://<knot.host>/events from now on
    rkey = stream.emit(push_event(knot, repo, sha))     # store an event (rkey: a fresh TID), send it live
    stream.emit_frame("not json")                       # any text frame, stored and replayed the same way
    stream.drop()                                       # close every open connection (code 1012)
    stream.refuse = True                                # answer every handshake with HTTP 403
    stream.hang = True                                  # never answer a handshake (until reset)
    gate = stream.pause_after(5)                        # 5 more frames in all, then hold every connection
    gate.held                                           # connections waiting at it now
    gate.open()                                         # let them (and every later one) carry on
    stream.connections                                  # every accepted connection: its cursor, what it got
    stream.close()                                      # end every connection; the fixture does it

It behaves as Tangled's knotserver (`knotserver/events.go`, `db/events.go`): each event is stored with
`created`, the knot's clock in unix ns (strictly increasing); a connection with `?cursor=N`, N > 0,
first gets the stored events with created > N, oldest first, in batches of `batch_size`, then the
live ones; without a cursor (or 0, or not a number) only the live ones. Frames are
`{"rkey", "nsid", "event"}` with no cursor in them. Rkeys are TIDs minted as the event is stored, as
the knot's `tid.TID()` is.

A `Gate` makes "in the middle of a replay" a state rather than a moment: the knot sends exactly the
frames it allows, and a connection at it waits (no frame, no close) until the test opens it or the
client goes away.

`BlackHoleKnot` listens on a loopback port and never accepts: the kernel completes TCP handshakes,
nobody ever answers a byte, as a wedged knot does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from app.streams.service import make_tid
from tests.support.knot import GitRepo, TestKnot

PIPELINE = "sh.tangled.pipeline"
REF_UPDATE = "sh.tangled.git.refUpdate"
ZERO_SHA = "0" * 40

_DROP = object()  # tells a connection's sender to close


@dataclass
class StoredEvent:
    created: int  # unix ns, the knot's clock
    rkey: str | None
    frame: str


@dataclass
class Connection:
    """One accepted `/events` connection: the cursor it asked for and the rkeys it was sent."""

    cursor: int | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    sent: list[str | None] = field(default_factory=list)
    open: bool = True
    # Set when the client goes away or the knot drops the connection: a held sender gives up.
    ending: asyncio.Event = field(default_factory=asyncio.Event)


class Gate:
    """Lets `after` frames through (over every connection of the stream), then holds each connection
    before its next frame until `open()`. Thread-safe: the knot serves on its own thread and loop."""

    def __init__(self, after: int) -> None:
        self.after = after
        self._passed = 0
        self._opened = False
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """How many connections are waiting at the gate now."""
        with self._lock:
            return len(self._waiting)

    def open(self) -> None:
        """Let every held connection carry on; from now on the gate holds nobody."""
        with self._lock:
            self._opened = True
            waiting = list(self._waiting.values())
        for loop, opened in waiting:
            loop.call_soon_threadsafe(opened.set)

    async def through(self, conn: Connection) -> bool:
        """Wait until `conn` may send its next frame: True, or False when the connection is ending."""
        opened = asyncio.Event()
        with self._lock:
            if self._opened or self._passed < self.after:
                self._passed += 1
                return True
            self._waiting[id(opened)] = (asyncio.get_running_loop(), opened)
        waits = [asyncio.ensure_future(opened.wait()), asyncio.ensure_future(conn.ending.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            with self._lock:
                self._waiting.pop(id(opened), None)
        return opened.is_set()


class KnotEventStream:
    """The `/events` stream of one TestKnot; see the module docstring."""

    def __init__(self, *, batch_size: int = 100) -> None:
        self.batch_size = batch_size
        self.refuse = False
        self.hang = False
        self.attempts = 0  # handshakes started, refused and hung ones included
        self.connections: list[Connection] = []
        self.gate: Gate | None = None
        self._events: list[StoredEvent] = []
        self._lock = threading.Lock()
        self._last_created = 0
        self._last_micros = 0
        self._closed = False

    @classmethod
    def attach(cls, knot: TestKnot, **kwargs: Any) -> KnotEventStream:
        stream = cls(**kwargs)
        knot.add_websocket_route("/events", stream._endpoint)
        return stream

    # -- what the knot says ------------------------------------------------------------------

    def new_rkey(self) -> str:
        """A fresh TID from the knot's clock, strictly after the previous one."""
        with self._lock:
            micros = max(time.time_ns() // 1_000, self._last_micros + 1)
            self._last_micros = micros
        return make_tid(micros, 0)

    def emit(self, event: dict[str, Any], *, nsid: str = PIPELINE, rkey: str | None = None) -> str:
        """Store an event as the knot's database would, send it to every open connection; its rkey."""
        rkey = rkey or self.new_rkey()
        self.emit_frame(json.dumps({"rkey": rkey, "nsid": nsid, "event": event}), rkey=rkey)
        return rkey

    def emit_frame(self, frame: str, *, rkey: str | None = None) -> None:
        """Store and send any text frame (malformed ones included) as the next event."""
        with self._lock:
            created = max(time.time_ns(), self._last_created + 1)
            self._last_created = created
            stored = StoredEvent(created, rkey, frame)
            self._events.append(stored)
            targets = [c for c in self.connections if c.open]
        for conn in targets:
            conn.loop.call_soon_threadsafe(conn.queue.put_nowait, stored)

    @property
    def events(self) -> list[StoredEvent]:
        with self._lock:
            return list(self._events)

    def pause_after(self, frames: int) -> Gate:
        """From now on send `frames` more frames in all, then hold every connection at the gate."""
        self.gate = Gate(frames)
        return self.gate

    def drop(self) -> None:
        """Close every open connection, as a knot restarting does."""
        with self._lock:
            targets = [c for c in self.connections if c.open]
        for conn in targets:
            conn.loop.call_soon_threadsafe(conn.queue.put_nowait, _DROP)
            conn.loop.call_soon_threadsafe(conn.ending.set)

    def close(self) -> None:
        self._closed = True
        self.hang = False
        if self.gate is not None:
            self.gate.open()
        self.drop()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self.connections if c.open)

    # -- the WebSocket ----------------------------------------------------------------------

    async def _endpoint(self, websocket: WebSocket) -> None:
        self.attempts += 1
        while self.hang and not self._closed:
            await asyncio.sleep(0.05)
        if self.refuse or self._closed:
            await websocket.close(code=1008)  # before accept: the handshake gets HTTP 403
            return
        raw = websocket.query_params.get("cursor", "")
        cursor = int(raw) if raw.isdigit() and len(raw) < 20 else 0
        conn = Connection(cursor=cursor or None, loop=asyncio.get_running_loop(), queue=asyncio.Queue())
        with self._lock:
            # Subscribing and reading the backlog under one lock: nothing is missed or sent twice.
            backlog = [e for e in self._events if cursor > 0 and e.created > cursor]
            self.connections.append(conn)
        reader: asyncio.Task[None] | None = None
        try:
            await websocket.accept()
            reader = asyncio.create_task(self._until_disconnected(websocket, conn))
            for start in range(0, len(backlog), self.batch_size):
                for stored in backlog[start : start + self.batch_size]:
                    if not await self._send(websocket, conn, stored):
                        return
            while True:
                item = await conn.queue.get()
                if item is _DROP or not await self._send(websocket, conn, item):
                    break
        except Exception:  # the client went away (a handshake it gave up on, or mid-send)
            pass
        finally:
            with self._lock:
                conn.open = False
            if reader is not None:
                reader.cancel()
            with contextlib.suppress(Exception):
                await websocket.close(code=1012)

    async def _send(self, websocket: WebSocket, conn: Connection, stored: StoredEvent) -> bool:
        """Send one frame once the gate (if any) lets it through; False when the connection ended first."""
        gate = self.gate
        if gate is not None and not await gate.through(conn):
            return False
        await websocket.send_text(stored.frame)
        conn.sent.append(stored.rkey)
        return True

    @staticmethod
    async def _until_disconnected(websocket: WebSocket, conn: Connection) -> None:
        with contextlib.suppress(Exception):
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        conn.ending.set()
        conn.queue.put_nowait(_DROP)


# -- sh.tangled.pipeline events ------------------------------------------------------------------


def _workflows(names: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "engine": "nixery",
            "clone": {"skip": False, "depth": 1, "submodules": False},
            "raw": "when:\n  - event: [push, pull_request, manual]\nsteps: []\n",
        }
        for name in names
    ]


def _repo(knot: str, repo: GitRepo, default_branch: str) -> dict[str, Any]:
    return {"knot": knot, "did": repo.did, "repo": repo.name, "defaultBranch": default_branch}


def push_event(
    knot: str,
    repo: GitRepo,
    sha: str,
    *,
    workflows: tuple[str, ...] | list[str] = ("ci.yml",),
    ref: str = "refs/heads/main",
    old_sha: str = ZERO_SHA,
) -> dict[str, Any]:
    """The sh.tangled.pipeline record a knot emits for a push."""
    return {
        "$type": PIPELINE,
        "triggerMetadata": {
            "kind": "push",
            "repo": _repo(knot, repo, "main"),
            "push": {"ref": ref, "newSha": sha, "oldSha": old_sha},
        },
        "workflows": _workflows(workflows),
    }


def pull_request_event(
    knot: str,
    repo: GitRepo,
    source_sha: str,
    *,
    source_branch: str = "feature",
    target_branch: str = "main",
    workflows: tuple[str, ...] | list[str] = ("ci.yml",),
    action: str = "create",
) -> dict[str, Any]:
    """The record a knot emits for a pull request."""
    return {
        "$type": PIPELINE,
        "triggerMetadata": {
            "kind": "pull_request",
            "repo": _repo(knot, repo, "main"),
            "pullRequest": {
                "sourceBranch": source_branch,
                "targetBranch": target_branch,
                "sourceSha": source_sha,
                "action": action,
            },
        },
        "workflows": _workflows(workflows),
    }


def manual_event(
    knot: str,
    repo: GitRepo,
    *,
    inputs: dict[str, str],
    workflows: tuple[str, ...] | list[str] = ("ci.yml",),
    default_branch: str = "main",
) -> dict[str, Any]:
    """The record of a manual run: no commit, inputs as `[{key, value}]`."""
    return {
        "$type": PIPELINE,
        "triggerMetadata": {
            "kind": "manual",
            "repo": _repo(knot, repo, default_branch),
            "manual": {"inputs": [{"key": k, "value": v} for k, v in inputs.items()]},
        },
        "workflows": _workflows(workflows),
    }


class BlackHoleKnot:
    """A loopback port whose TCP handshakes complete and that never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlackHoleKnot:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- sh.tangled.git.refUpdate events (current knots: the spindle decides what runs) ---------------


def ref_update_event(
    repo: GitRepo,
    new_sha: str,
    *,
    ref: str = "refs/heads/main",
    old_sha: str = ZERO_SHA,
    committer: str | None = None,
    changed_files: list[str] | None = None,
    repo_did: str | None = None,
) -> dict[str, Any]:
    """The record a knot emits for a pushed ref: the Dec 2025 shape (`repoDid` is the owner's DID,
    `repoName`), or with `repo_did` the 2026 one (`repo` is the repo's own DID, `ownerDid`, and
    `changedFiles` when given)."""
    event: dict[str, Any] = {
        "$type": REF_UPDATE,
        "ref": ref,
        "committerDid": committer or repo.did,
        "oldSha": old_sha,
        "newSha": new_sha,
        "meta": {"isDefaultRef": ref == "refs/heads/main", "commitCount": {"byEmail": []}},
    }
    if repo_did is None:
        event.update({"repoDid": repo.did, "repoName": repo.name})
    else:
        event.update({"repo": repo_did, "ownerDid": repo.did})
    if changed_files is not None:
        event["changedFiles"] = changed_files
    return event
