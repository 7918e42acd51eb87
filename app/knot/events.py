"""Knot-dispatched runs: one long-lived subscription to each registered knot's `/events` stream.

A knot emits an `sh.tangled.pipeline` record on its event stream for every push or pull
request; we act on those for repos registered here, and record them through the same path
as a manual trigger. Frames are `{"rkey", "nsid", "event"}` and carry no cursor, so the
cursor we store is our own clock reading (unix ns) when the event was recorded, as Tangled's
own consumer does; unlike that consumer we store it only after the pipeline is committed, so
an event that arrives while we stop is replayed at the next start instead of lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from app.config import Settings
from app.engine.queue import Scheduler
from app.knot.client import KnotClient
from app.knot.models import KnotCursor
from app.repos import service as repo_service
from app.xrpc.errors import InvalidRequest, UpstreamFailure

log = logging.getLogger(__name__)

PIPELINE_NSID = "sh.tangled.pipeline"
# Our clock and the knot's differ; reconnecting this far behind our last reading means an
# event in flight during a restart is still replayed (a replay of a recorded one is a no-op).
CURSOR_SAFETY_NS = 60 * 1_000_000_000
MAX_FRAME_BYTES = 1 << 20
REFRESH_SECONDS = 2.0
BACKOFF_START = 0.5
BACKOFF_MAX = 60.0
IDLE_TIMEOUT = 90.0  # no frame nor pong for this long: reconnect
UPSTREAM_ATTEMPTS = 3


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TriggerRepo(_Lenient):
    knot: str
    did: str
    repo: str
    default_branch: str | None = Field(default=None, alias="defaultBranch")


class PushData(_Lenient):
    ref: str
    new_sha: str = Field(alias="newSha")
    old_sha: str | None = Field(default=None, alias="oldSha")


class PullRequestData(_Lenient):
    source_branch: str | None = Field(default=None, alias="sourceBranch")
    target_branch: str | None = Field(default=None, alias="targetBranch")
    source_sha: str = Field(alias="sourceSha")
    action: str | None = None


class ManualInput(_Lenient):
    key: str
    value: str


class ManualData(_Lenient):
    inputs: list[ManualInput] = Field(default_factory=list)


class TriggerMetadata(_Lenient):
    kind: str
    repo: TriggerRepo
    push: PushData | None = None
    pull_request: PullRequestData | None = Field(default=None, alias="pullRequest")
    manual: ManualData | None = None


class PipelineWorkflow(_Lenient):
    name: str


class PipelineRecord(_Lenient):
    trigger_metadata: TriggerMetadata = Field(alias="triggerMetadata")
    workflows: list[PipelineWorkflow] = Field(default_factory=list, max_length=100)

    def commit(self) -> str | None:
        meta = self.trigger_metadata
        if meta.kind == "push" and meta.push:
            return meta.push.new_sha
        if meta.kind == "pull_request" and meta.pull_request:
            return meta.pull_request.source_sha
        return None


class SkipEvent(Exception):
    """The event is well-formed JSON but not for us, or not runnable: log it and move on."""


def events_url(knot: str, *, dev: bool, cursor: int | None) -> str:
    """`wss://<knot>/events` (`ws://` in dev mode), with `?cursor=` when we have one."""
    scheme = "ws" if dev else "wss"
    url = f"{scheme}://{knot}/events"
    return f"{url}?cursor={cursor}" if cursor else url


class KnotEventConsumer:
    """Keeps one subscription per distinct registered knot, following `repo add` / `repo remove`."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        knot: KnotClient,
        scheduler: Scheduler,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.knot = knot
        self.scheduler = scheduler
        self.refresh_seconds = refresh_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self.connected: dict[str, bool] = {}

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="knot-events-supervisor")

    async def stop(self) -> None:
        tasks = [t for t in [self._supervisor, *self._tasks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._supervisor = None

    async def refresh(self) -> None:
        """Start subscriptions for newly registered knots and stop those no repo uses any more."""
        async with self.sessionmaker() as session:
            wanted = set(await repo_service.knots(session=session))
        for knot in wanted - self._tasks.keys():
            log.info("subscribing to knot %s events", knot)
            self._tasks[knot] = asyncio.create_task(self._follow(knot), name=f"knot-events:{knot}")
        for knot in self._tasks.keys() - wanted:
            log.info("unsubscribing from knot %s events: no registered repo uses it", knot)
            self._tasks.pop(knot).cancel()
            self.connected.pop(knot, None)

    async def _supervise(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not read the registered knots; retrying")
            await asyncio.sleep(self.refresh_seconds)

    async def _follow(self, knot: str) -> None:
        """Connect, read, and reconnect with jittered exponential backoff, forever."""
        backoff = BACKOFF_START
        while True:
            try:
                got_frames = await self._connection(knot)
                if got_frames:
                    backoff = BACKOFF_START
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("knot %s events: %s", knot, exc or type(exc).__name__)
            except Exception:
                log.exception("knot %s events: unexpected error", knot)
            finally:
                self.connected[knot] = False
            delay = backoff * (1 + random.random() / 2)
            backoff = min(backoff * 2, BACKOFF_MAX)
            await asyncio.sleep(delay)

    async def _connection(self, knot: str) -> bool:
        cursor = await self._load_cursor(knot)
        url = events_url(
            knot, dev=self.settings.dev, cursor=max(cursor - CURSOR_SAFETY_NS, 1) if cursor else None
        )
        got_frames = False
        async with connect(
            url,
            open_timeout=self.settings.knot_timeout,
            max_size=MAX_FRAME_BYTES,
            ping_interval=30,
            ping_timeout=IDLE_TIMEOUT,
            close_timeout=2,
        ) as ws:
            self.connected[knot] = True
            log.info("connected to %s", url)
            async for frame in ws:
                got_frames = True
                received_ns = time.time_ns()
                if isinstance(frame, bytes):
                    continue
                await self.handle_frame(knot, frame, received_ns=received_ns)
        return got_frames

    async def handle_frame(self, knot: str, frame: str, *, received_ns: int) -> None:
        """Record a pipeline event (or skip it with a log line), then store the cursor."""
        try:
            message = json.loads(frame)
            if not isinstance(message, dict):
                raise SkipEvent("frame is not a JSON object")
            if message.get("nsid") != PIPELINE_NSID:
                return
            await self._record(knot, message)
        except (SkipEvent, ValueError) as exc:
            log.warning("knot %s: skipped event: %s", knot, exc)
        await self._store_cursor(knot, received_ns)

    async def _record(self, knot: str, message: dict[str, Any]) -> None:
        from app.runs import service as run_service  # the trigger's recording path

        rkey = message.get("rkey")
        if not isinstance(rkey, str) or not run_service.RKEY_RE.match(rkey):
            raise SkipEvent(f"invalid rkey {rkey!r}")
        try:
            record = PipelineRecord.model_validate(message.get("event"))
        except ValidationError as exc:
            raise SkipEvent(f"{rkey}: not an sh.tangled.pipeline record: {exc.errors()[0]['msg']}") from None
        repo = record.trigger_metadata.repo
        if repo.knot != knot:
            raise SkipEvent(f"{rkey}: names knot {repo.knot!r} but came from {knot!r}")
        sha = record.commit()
        if sha is None:
            raise SkipEvent(f"{rkey}: {record.trigger_metadata.kind} event without a commit")
        async with self.sessionmaker() as session:
            registered = await repo_service.find(session=session, knot=knot, did=repo.did, name=repo.repo)
        if registered is None:
            raise SkipEvent(f"{rkey}: {repo.did}/{repo.repo} is not registered on this spindle")
        inputs = {}
        if record.trigger_metadata.manual:
            inputs = {i.key: i.value for i in record.trigger_metadata.manual.inputs}
        stems = [
            w.name.rsplit(".", 1)[0] if w.name.endswith((".yml", ".yaml")) else w.name
            for w in record.workflows
        ]
        for attempt in range(UPSTREAM_ATTEMPTS):
            try:
                created = await run_service.record_dispatched(
                    sessionmaker=self.sessionmaker,
                    knot_client=self.knot,
                    settings=self.settings,
                    knot=knot,
                    rkey=rkey,
                    repo_did=repo.did,
                    repo_name=repo.repo,
                    sha=sha,
                    kind=record.trigger_metadata.kind,
                    trigger=message["event"]["triggerMetadata"],
                    stems=stems,
                    inputs=inputs,
                )
                break
            except UpstreamFailure as exc:
                if attempt + 1 == UPSTREAM_ATTEMPTS:
                    raise SkipEvent(f"{rkey}: knot failed {UPSTREAM_ATTEMPTS} times: {exc.message}") from None
                await asyncio.sleep(BACKOFF_START * 2**attempt)
            except InvalidRequest as exc:
                raise SkipEvent(f"{rkey}: {exc.message}") from None
        if created:
            self.scheduler.wake()

    async def _load_cursor(self, knot: str) -> int | None:
        async with self.sessionmaker() as session:
            row = await session.get(KnotCursor, knot)
            return row.cursor if row else None

    async def _store_cursor(self, knot: str, cursor: int) -> None:
        async with self.sessionmaker() as session:
            row = await session.get(KnotCursor, knot)
            if row is None:
                session.add(KnotCursor(knot=knot, cursor=cursor))
            elif cursor > row.cursor:
                row.cursor = cursor
            await session.commit()
