"""Following Tangled's records on Jetstream, so that a repo that picks this spindle is served with
no operator step.

    JetstreamConsumer
      start()      nothing when SPINDLE_JETSTREAM_URL is empty or no owner is set; else one task:
      first start  (no stored cursor) the cursor is set to now; until a backfill has completed,
                   each start reads the owner's and members' existing records from their PDSes
                   (in the background)
      connection   <url>?wantedCollections=...&cursor=<stored - REWIND_US>; frames handled in
                   order; reconnect with jittered exponential backoff, forever
      handle_frame {did, time_us, kind: "commit", commit: {operation, collection, rkey, record}}
                   → app.jetstream.service.apply; a new member's records are backfilled too

Jetstream replays every event from `?cursor=` (its `time_us`, unix µs). The cursor is stored at
most CURSOR_SAVE_SECONDS after an event and when the connection ends; a resume starts REWIND_US
before it, so nothing between the last store and a crash is lost. Replayed events are puts and
deletes of the same records again, which change nothing. A dead Jetstream is only a task that
retries: the API, the knots and the operator's registry do not wait on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK, WebSocketException

from app.config import Settings
from app.database import utcnow
from app.identity.exceptions import ResolutionError
from app.identity.pds import PdsError, PdsRecordReader
from app.jetstream import service
from app.jetstream.models import JetstreamCursor
from app.jetstream.pulls import PULL, NotRunnable, pulled_request
from app.metrics import Metrics
from app.runs.flows import RunFlows
from app.xrpc.errors import InvalidRequest, UpstreamFailure

log = logging.getLogger(__name__)

CURSOR_NAME = "jetstream"
# A second row of the cursor table: when the first backfill completed. Until it has, every start
# backfills again (a crash in the middle of one leaves no account unread).
BACKFILLED_NAME = "backfilled"
REWIND_US = 10_000_000  # a resume starts this long before the stored cursor (µs)
CURSOR_SAVE_SECONDS = 1.0
MAX_FRAME_BYTES = 1 << 20  # Tangled's records are small; a bigger frame closes the connection
BACKOFF_START = 0.5
BACKOFF_MAX = 60.0
OPEN_TIMEOUT = 10.0
PING_INTERVAL = 30.0
PING_TIMEOUT = 90.0
BACKFILL_ATTEMPTS = 3
OPERATIONS = ("create", "update", "delete")


WANTED_COLLECTIONS = (*service.COLLECTIONS, PULL)


def subscribe_url(base: str, *, cursor: int | None) -> str:
    """Jetstream's subscription URL for Tangled's collections, resuming at `cursor` when given."""
    params: list[tuple[str, str]] = [("wantedCollections", c) for c in WANTED_COLLECTIONS]
    if cursor is not None:
        params.append(("cursor", str(cursor)))
    return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"


def parse_frame(frame: bytes | str) -> tuple[int | None, service.RecordChange | None]:
    """(time_us, change) of one Jetstream frame: None for parts it lacks (identity and account
    events have a time but no change). ValueError for a frame that is not a Jetstream event."""
    message = json.loads(frame)
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    time_us = message.get("time_us")
    if not isinstance(time_us, int) or isinstance(time_us, bool) or time_us <= 0:
        raise ValueError("no time_us")
    if message.get("kind") != "commit":
        return time_us, None
    commit, did = message.get("commit"), message.get("did")
    if not isinstance(commit, dict) or not isinstance(did, str):
        raise ValueError("a commit event without commit or did")
    operation, collection, rkey = commit.get("operation"), commit.get("collection"), commit.get("rkey")
    record = commit.get("record")
    if operation not in OPERATIONS or not isinstance(collection, str) or not isinstance(rkey, str):
        raise ValueError("a commit without operation, collection and rkey")
    if operation != "delete" and not isinstance(record, dict):
        raise ValueError(f"a {operation} without a record")
    return time_us, service.RecordChange(
        did=did,
        collection=collection,
        rkey=rkey,
        operation=operation,
        record=record if operation != "delete" else None,
    )


@dataclass
class JetstreamLink:
    """What the subscription is doing, for logs and tests."""

    connected: bool = False
    connects: int = 0
    events: int = 0
    applied: int = 0
    backfills: int = 0  # accounts whose records were read from their PDS
    time_us: int | None = None  # of the last event handled
    last_url: str | None = None
    last_error: str | None = None


class JetstreamConsumer:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        records: PdsRecordReader,
        flows: RunFlows,
        metrics: Metrics | None = None,
        backoff_start: float | None = None,
        backoff_max: float | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.records = records
        self.flows = flows
        self.backoff_start = BACKOFF_START if backoff_start is None else backoff_start
        self.backoff_max = BACKOFF_MAX if backoff_max is None else backoff_max
        self.link = JetstreamLink()
        self._task: asyncio.Task[None] | None = None
        self._backfills: set[asyncio.Task[None]] = set()
        # Live events and backfill write the same rows: one change at a time.
        self._apply_lock = asyncio.Lock()
        self._unsaved: int | None = None
        self._saved_at = 0.0

    async def start(self) -> None:
        if not self.settings.jetstream_url:
            return
        if not self.settings.owner:
            log.warning("jetstream: no SPINDLE_OWNER, so no member or repo record counts; not followed")
            return
        self._task = asyncio.create_task(self._run(), name="jetstream")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._backfills) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self._unsaved is not None:
            await self._store_cursor(self._unsaved)

    # -- the subscription -----------------------------------------------------------------------

    async def _run(self) -> None:
        if await self._load_cursor() is None:
            # From now on Jetstream has it; what came before is read from the PDSes.
            await self._store_cursor(time.time_ns() // 1_000)
        if await self._load_cursor(BACKFILLED_NAME) is None:
            async with self.sessionmaker() as session:
                known = await service.members(session=session)
            self._backfill([self.settings.require_owner(), *known], first=True)
        backoff = self.backoff_start
        while True:
            events_before = self.link.events
            try:
                await self._connection()
                self.link.last_error = "Jetstream closed the stream"
            except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
                self.link.last_error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                self.link.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("jetstream: unexpected error")
            finally:
                self.link.connected = False
            if self.link.events > events_before:
                backoff = self.backoff_start
            delay = backoff * (1 + random.random() / 2)
            log.warning("jetstream: %s; reconnecting in %.1f s", self.link.last_error, delay)
            backoff = min(backoff * 2, self.backoff_max)
            await asyncio.sleep(delay)

    async def _connection(self) -> None:
        stored = await self._load_cursor()
        cursor = max(stored - REWIND_US, 1) if stored else None
        url = subscribe_url(self.settings.jetstream_url, cursor=cursor)
        self.link.last_url = url
        async with connect(
            url,
            open_timeout=OPEN_TIMEOUT,
            max_size=MAX_FRAME_BYTES,
            max_queue=16,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            close_timeout=2,
            proxy=None,
            user_agent_header="tangled-spindle",
        ) as ws:
            self.link.connected = True
            self.link.connects += 1
            log.info("jetstream: reading %s", url)
            try:
                while True:
                    try:
                        wait = CURSOR_SAVE_SECONDS if self._unsaved is not None else None
                        frame = await asyncio.wait_for(ws.recv(decode=False), wait)
                    except TimeoutError:
                        await self._flush_cursor()
                        continue
                    except ConnectionClosedOK:
                        return
                    await self.handle_frame(frame)
            finally:
                await self._flush_cursor()

    async def handle_frame(self, frame: bytes | str) -> str:
        """Apply one frame's record change; the outcome in words (also logged)."""
        try:
            time_us, change = parse_frame(frame)
        except (ValueError, RecursionError) as exc:
            log.warning("jetstream: skipped a frame: %s", exc)
            return "skipped"
        self.link.events += 1
        outcome = "no change"
        if change is not None and change.collection in service.COLLECTIONS:
            outcome = await self._apply(change)
        elif change is not None and change.collection == PULL and change.operation != "delete":
            outcome = await self._pull(change)
        if time_us is not None:
            self.link.time_us = time_us
            if self.metrics is not None:
                self.metrics.observe_jetstream_event(time_us)
            await self._note_cursor(time_us)
        return outcome

    async def _apply(self, change: service.RecordChange, *, follow_members: bool = True) -> str:
        async with self._apply_lock, self.sessionmaker() as session:
            applied = await service.apply(session=session, settings=self.settings, change=change)
        if applied.outcome.startswith("ignored"):
            log.debug("jetstream %s/%s/%s: %s", change.did, change.collection, change.rkey, applied.outcome)
        else:
            self.link.applied += 1
            log.info("jetstream %s/%s/%s: %s", change.did, change.collection, change.rkey, applied.outcome)
        if applied.new_member is not None and follow_members:
            self._backfill([applied.new_member])
        return applied.outcome

    async def _pull(self, change: service.RecordChange) -> str:
        """Start the runs of a pull request of a served repo; a pull that cannot run is logged."""
        where = f"jetstream {change.did}/{PULL}/{change.rkey}"
        try:
            async with self.sessionmaker() as session:
                pull = await pulled_request(
                    session=session, settings=self.settings, knot=self.flows.knot, change=change
                )
            result = await self.flows.pull_request(pull)
        except NotRunnable as exc:
            log.debug("%s: not run: %s", where, exc)
            return f"ignored: {exc}"
        except (InvalidRequest, UpstreamFailure) as exc:
            log.warning("%s: not run: %s", where, exc.message)
            return f"skipped: {exc.message}"
        if result.created:
            log.info("%s: pull request runs %s", where, ", ".join(result.runs))
            return "recorded"
        return "redelivered" if result.pipeline is not None else "no workflow matches"

    # -- backfill: the records that were there before we listened --------------------------------

    def _backfill(self, dids: Iterable[str], *, first: bool = False) -> None:
        task = asyncio.create_task(
            self._backfill_all(list(dict.fromkeys(dids)), first=first), name="jetstream-backfill"
        )
        self._backfills.add(task)
        task.add_done_callback(self._backfills.discard)

    async def _backfill_all(self, dids: list[str], *, first: bool) -> None:
        """Backfill `dids`, and after the owner the members its records named; with `first`, mark
        the first backfill done once every account was read."""
        complete, queue = True, list(dids)
        done: set[str] = set()
        while queue:
            did = queue.pop(0)
            if did in done:
                continue
            done.add(did)
            for attempt in range(1, BACKFILL_ATTEMPTS + 1):
                try:
                    await self._backfill_one(did)
                    self.link.backfills += 1
                    break
                except (PdsError, ResolutionError) as exc:
                    log.warning("jetstream backfill of %s (attempt %d): %s", did, attempt, exc)
                    if attempt < BACKFILL_ATTEMPTS:
                        await asyncio.sleep(self.backoff_start * 2**attempt)
            else:
                complete = False
            if did == self.settings.owner:
                async with self.sessionmaker() as session:
                    queue.extend(await service.members(session=session))
        if first and complete:
            await self._store_cursor(time.time_ns() // 1_000, name=BACKFILLED_NAME)

    async def _backfill_one(self, did: str) -> None:
        """Apply `did`'s member (the owner's only), collaborator and repo records as creates."""
        collections = [service.COLLABORATOR, service.REPO]
        if did == self.settings.owner:
            collections.insert(0, service.MEMBER)
        for collection in collections:
            async for record in self.records.list_records(did, collection):
                change = service.RecordChange(
                    did=did, collection=collection, rkey=record.rkey, operation="create", record=record.value
                )
                await self._apply(change, follow_members=False)

    # -- the cursor ------------------------------------------------------------------------------

    async def _load_cursor(self, name: str = CURSOR_NAME) -> int | None:
        async with self.sessionmaker() as session:
            row = await session.get(JetstreamCursor, name)
            return row.time_us if row else None

    async def _note_cursor(self, time_us: int) -> None:
        self._unsaved = time_us
        if time.monotonic() - self._saved_at >= CURSOR_SAVE_SECONDS:
            await self._store_cursor(time_us)

    async def _flush_cursor(self) -> None:
        if self._unsaved is not None:
            await self._store_cursor(self._unsaved)

    async def _store_cursor(self, time_us: int, *, name: str = CURSOR_NAME) -> None:
        async with self.sessionmaker() as session:
            changed = await session.execute(
                update(JetstreamCursor)
                .where(JetstreamCursor.name == name)
                .values(time_us=time_us, updated_at=utcnow())
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                session.add(JetstreamCursor(name=name, time_us=time_us))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()  # another process sharing the database stored it first
        if name == CURSOR_NAME:
            self._unsaved = None
            self._saved_at = time.monotonic()
