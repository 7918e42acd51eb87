"""Knot-dispatched runs: one long-lived subscription to each registered knot's `/events` stream.

    KnotEventConsumer
      supervisor   every REFRESH_SECONDS: the distinct knots of registered repos → one task each
                   (`spindle repo add` / `repo remove` in another process start and stop them)
      per knot     ws(s)://<knot>/events?cursor=<stored - margin>; frames handled in order, one at
                   a time; reconnect with jittered exponential backoff, forever
      handle_frame {"rkey", "nsid", "event"}: `sh.tangled.pipeline` → checks →
                   app.runs.flows.knot_pipeline (older knots); `sh.tangled.git.refUpdate` of a
                   served repo → app.runs.flows.knot_push (current knots: the spindle decides)

A knot replays the events whose `created` (its clock, unix ns) is after `?cursor=`, then sends live
ones; frames carry no `created`, so the cursor is our estimate of it, stored after each frame is
handled. Tangled knots mint each event's rkey as a TID at the moment they store it, so its time IS
the knot's clock and a restart in the middle of a replay resumes exactly; for other rkeys it is our
clock when the frame arrived (as Tangled's own consumer does). A resume starts CURSOR_SAFETY_NS
earlier to absorb skew; the replayed events are redeliveries, which record nothing.

An event runs only when the knot it came from is the one it names and (knot, did, repo) is
registered here (`did` is the owner's DID; newer knots also give the repo's own as `repoDid`, and
either may be the registered one). Bad frames are logged and skipped, frames over MAX_FRAME_BYTES
refused. A flood is bounded: one frame at a time per knot, MAX_QUEUED_FRAMES read ahead, and the
knot's socket is not read beyond that (TCP pushes back).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, WebSocketException
from websockets.frames import CloseCode

from app.config import Settings
from app.database import utcnow
from app.knot.client import KnotClient
from app.knot.models import KnotCursor
from app.repos import service as repo_service
from app.runs import flows as run_flows
from app.runs.schemas import COMMIT_RE, MAX_INPUTS, MAX_INPUTS_BYTES
from app.workflows.inputs import INPUT_NAME_RE, MAX_INPUT_NAME
from app.xrpc.errors import InvalidRequest, RateLimitExceeded, UpstreamFailure
from app.xrpc.lexicon import FORMATS

log = logging.getLogger(__name__)

PIPELINE_NSID = "sh.tangled.pipeline"
REF_UPDATE_NSID = "sh.tangled.git.refUpdate"
ZERO_SHA = "0" * 40
SKIP_CI_OPTIONS = frozenset({"ci-skip", "skip-ci"})  # `git push -o ci-skip`, as Tangled's spindle reads it
MAX_CHANGED_FILES = 10_000
# Our clock and the knot's differ: a resume starts this far before the stored cursor.
CURSOR_SAFETY_NS = 60 * 1_000_000_000
MAX_FRAME_BYTES = 1 << 20  # a bigger event is refused (logged and skipped)
# What the connection reads at all: a bigger frame closes it (1009), and the next connection
# skips past it rather than being fed it again forever.
MAX_WIRE_BYTES = 4 << 20
MAX_QUEUED_FRAMES = 4  # read-ahead while an event is being recorded: bounds memory per knot
REFRESH_SECONDS = 2.0
BACKOFF_START = 0.5
BACKOFF_MAX = 60.0
PING_INTERVAL = 30.0
PING_TIMEOUT = 90.0  # no pong for this long: the knot is gone, reconnect
UPSTREAM_ATTEMPTS = 3  # the knot failing to serve an event's files: tries before skipping it
CURSOR_SAVE_SECONDS = 1.0  # how stale the stored cursor may be after frames that are not pipelines

Outcome = Literal["recorded", "redelivered", "ignored", "skipped"]

_is_rkey = FORMATS["record-key"][0]
_is_tid = FORMATS["tid"][0]
_TID_ALPHABET = {c: i for i, c in enumerate("234567abcdefghijklmnopqrstuvwxyz")}


def tid_time_ns(rkey: str) -> int | None:
    """The time (unix ns) a TID record key was minted, or None for another kind of key."""
    if not _is_tid(rkey):
        return None
    value = 0
    for char in rkey:
        value = (value << 5) | _TID_ALPHABET[char]
    return (value >> 10) * 1_000  # 53 bits of microseconds, then 10 bits of clock id


def cursor_mark(rkey: str, received_ns: int) -> int:
    """Our estimate of the event's `created` on the knot: its TID time, else our clock now."""
    minted = tid_time_ns(rkey)
    # Never later than now: a TID from the future would make a resume skip real events.
    return received_ns if minted is None else min(minted, received_ns)


# -- the sh.tangled.pipeline record, as knots emit it (unknown fields are ignored) -----------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TriggerRepo(_Lenient):
    knot: str = Field(max_length=300)
    did: str = Field(max_length=2048)  # the owner's DID
    repo: str = Field(max_length=300)
    # Newer knots also name the repo's own DID, which a registration may use instead of the owner's.
    repo_did: str | None = Field(default=None, alias="repoDid", max_length=2048)
    default_branch: str | None = Field(default=None, alias="defaultBranch", max_length=255)


class PushData(_Lenient):
    ref: str = Field(max_length=1024)
    new_sha: str = Field(alias="newSha", max_length=64)
    old_sha: str | None = Field(default=None, alias="oldSha", max_length=64)


class PullRequestData(_Lenient):
    source_branch: str | None = Field(default=None, alias="sourceBranch", max_length=1024)
    target_branch: str | None = Field(default=None, alias="targetBranch", max_length=1024)
    source_sha: str = Field(alias="sourceSha", max_length=64)
    action: str | None = Field(default=None, max_length=64)


class ManualInput(_Lenient):
    key: str = Field(max_length=MAX_INPUT_NAME, pattern=INPUT_NAME_RE.pattern)
    value: str = Field(max_length=MAX_INPUTS_BYTES)


class ManualData(_Lenient):
    inputs: list[ManualInput] = Field(default_factory=list, max_length=MAX_INPUTS)


class TriggerMetadata(_Lenient):
    kind: Literal["push", "pull_request", "manual"]
    repo: TriggerRepo
    push: PushData | None = None
    pull_request: PullRequestData | None = Field(default=None, alias="pullRequest")
    manual: ManualData | None = None


class PipelineWorkflow(_Lenient):
    name: str = Field(max_length=1024)


class PipelineRecord(_Lenient):
    trigger_metadata: TriggerMetadata = Field(alias="triggerMetadata")
    workflows: list[PipelineWorkflow] = Field(default_factory=list, max_length=100)


class RefUpdateRecord(_Lenient):
    """`sh.tangled.git.refUpdate` in both shapes: Dec 2025 knots name the owner's DID (`repoDid`)
    and `repoName`; 2026 knots name the repo's own DID (`repo`), `ownerDid`, `changedFiles`."""

    ref: str = Field(max_length=2560)
    old_sha: str = Field(alias="oldSha", max_length=64)
    new_sha: str = Field(alias="newSha", max_length=64)
    committer_did: str | None = Field(default=None, alias="committerDid", max_length=2048)
    owner_did: str | None = Field(default=None, alias="repoDid", max_length=2048)
    repo_name: str | None = Field(default=None, alias="repoName", max_length=300)
    repo: str | None = Field(default=None, max_length=2048)
    owner: str | None = Field(default=None, alias="ownerDid", max_length=2048)
    changed_files: list[str] | None = Field(default=None, alias="changedFiles", max_length=MAX_CHANGED_FILES)
    push_options: list[str] = Field(default_factory=list, alias="pushOptions", max_length=50)


class SkipEvent(Exception):
    """Well-formed enough to have a place in the stream, but not for us or not runnable."""


class SilentKnot(TimeoutError):
    """The knot did not complete the `/events` handshake within the knot timeout."""


def parse_pipeline_event(*, knot: str, rkey: str, event: Any) -> run_flows.DispatchedPipeline:
    """Check one pipeline event that `knot` sent; SkipEvent says why it does not run here."""
    try:
        record = PipelineRecord.model_validate(event)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "event"
        raise SkipEvent(f"not an sh.tangled.pipeline record: {where}: {first['msg']}") from None
    meta = record.trigger_metadata
    if meta.repo.knot != knot:
        raise SkipEvent(f"it names knot {meta.repo.knot!r} but came from {knot!r}")
    sha: str | None = None
    if meta.kind == "push":
        sha = meta.push.new_sha if meta.push else None
    elif meta.kind == "pull_request":
        sha = meta.pull_request.source_sha if meta.pull_request else None
    if meta.kind != "manual":
        if sha is None or not COMMIT_RE.match(sha):
            raise SkipEvent(f"a {meta.kind} event without a full commit id ({sha!r})")
        sha = sha.lower()
    elif not meta.repo.default_branch:
        raise SkipEvent("a manual event must name the repo's defaultBranch, the commit it runs at")
    inputs: dict[str, str] = {}
    if meta.kind == "manual" and meta.manual:
        inputs = {i.key: i.value for i in meta.manual.inputs}
        if (
            sum(len(k) + len(v.encode("utf-8", "surrogatepass")) for k, v in inputs.items())
            > MAX_INPUTS_BYTES
        ):
            raise SkipEvent(f"manual inputs are larger than {MAX_INPUTS_BYTES // 1024} KiB in total")
    if not record.workflows:
        raise SkipEvent("it names no workflow")
    return run_flows.DispatchedPipeline(
        knot=knot,
        rkey=rkey,
        repo_did=meta.repo.did,
        repo_name=meta.repo.repo,
        kind=meta.kind,
        sha=sha,
        default_branch=meta.repo.default_branch,
        names=tuple(w.name for w in record.workflows),
        other_dids=(meta.repo.repo_did,) if meta.repo.repo_did not in (None, meta.repo.did) else (),
        inputs=inputs,
        trigger=meta.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


def events_url(knot: str, *, dev: bool, cursor: int | None) -> str:
    """`wss://<knot>/events` (`ws://` in dev mode), with `?cursor=` when we have one."""
    scheme = "ws" if dev else "wss"
    url = f"{scheme}://{knot}/events"
    return f"{url}?cursor={cursor}" if cursor else url


@dataclass
class KnotLink:
    """What the subscription to one knot is doing, for logs, health and tests."""

    connected: bool = False
    connects: int = 0
    frames: int = 0
    recorded: int = 0
    last_error: str | None = None


class KnotEventConsumer:
    """Keeps one subscription per distinct registered knot, following `repo add` / `repo remove`."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        knot: KnotClient,
        flows: run_flows.RunFlows,
        refresh_seconds: float | None = None,
        backoff_start: float | None = None,
        backoff_max: float | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.knot = knot
        self.flows = flows
        # Read at construction, not import, so that tests can shorten the module's defaults.
        self.refresh_seconds = REFRESH_SECONDS if refresh_seconds is None else refresh_seconds
        self.backoff_start = BACKOFF_START if backoff_start is None else backoff_start
        self.backoff_max = BACKOFF_MAX if backoff_max is None else backoff_max
        self.links: dict[str, KnotLink] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._skip_to: dict[str, int] = {}
        self._unsaved: dict[str, int] = {}  # cursor marks not stored yet, per knot
        self._saved_at: dict[str, float] = {}  # monotonic time of the last store, per knot
        self._supervisor: asyncio.Task[None] | None = None

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
        for knot in sorted(wanted):
            task = self._tasks.get(knot)
            if task is None or task.done():
                log.info("knot %s: subscribing to its events", knot)
                self.links.setdefault(knot, KnotLink())
                self._tasks[knot] = asyncio.create_task(self._follow(knot), name=f"knot-events:{knot}")
        for knot in sorted(self._tasks.keys() - wanted):
            log.info("knot %s: unsubscribing, no registered repo uses it", knot)
            task = self._tasks.pop(knot)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.links.pop(knot, None)
            self._skip_to.pop(knot, None)
            # Events for unregistered repos are ignored anyway: a later `repo add` starts afresh
            # instead of replaying everything the knot said while nobody here cared.
            await self._forget_cursor(knot)

    async def _supervise(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("could not read the registered knots; retrying")
            await asyncio.sleep(self.refresh_seconds)

    async def _follow(self, knot: str) -> None:
        """Connect, read, and reconnect with jittered exponential backoff, forever."""
        link = self.links.setdefault(knot, KnotLink())
        backoff = self.backoff_start
        while True:
            frames_before = link.frames
            try:
                await self._connection(knot, link)
                link.last_error = "the knot closed the stream"
            except SilentKnot as exc:
                link.last_error = str(exc)
            except (OSError, TimeoutError, WebSocketException) as exc:
                link.last_error = f"{type(exc).__name__}: {exc}"
                if (
                    isinstance(exc, ConnectionClosed)
                    and exc.sent
                    and exc.sent.code == CloseCode.MESSAGE_TOO_BIG
                ):
                    log.error("knot %s sent a frame over %d bytes: skipping past it", knot, MAX_WIRE_BYTES)
                    self._skip_to[knot] = time.time_ns()
            except Exception as exc:
                link.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("knot %s events: unexpected error", knot)
            finally:
                link.connected = False
            if link.frames > frames_before:
                backoff = self.backoff_start
            delay = backoff * (1 + random.random() / 2)
            log.warning("knot %s events: %s; reconnecting in %.1f s", knot, link.last_error, delay)
            backoff = min(backoff * 2, self.backoff_max)
            await asyncio.sleep(delay)

    async def _connection(self, knot: str, link: KnotLink) -> None:
        stored = await self._load_cursor(knot)
        cursor = max(stored - CURSOR_SAFETY_NS, 1) if stored else None
        if knot in self._skip_to:
            cursor = max(cursor or 0, self._skip_to[knot])
        url = events_url(knot, dev=self.settings.dev, cursor=cursor)
        try:
            ws = await connect(
                url,
                open_timeout=self.settings.knot_timeout,
                max_size=MAX_WIRE_BYTES,
                max_queue=MAX_QUEUED_FRAMES,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
                close_timeout=2,
                proxy=None,
                user_agent_header="tangled-spindle",
            )
        except TimeoutError:
            # Said in our words: the websockets library's own wording is not ours to promise.
            raise SilentKnot(
                f"the knot did not answer the /events handshake within {self.settings.knot_timeout:g} s"
            ) from None
        async with ws:
            link.connected = True
            link.connects += 1
            log.info("knot %s: reading %s", knot, url)
            if stored is None:
                # From now on nothing is missed: a drop before the first event resumes from here.
                await self._store_cursor(knot, time.time_ns())
            try:
                while True:
                    try:
                        # A quiet stream still stores the progress it noted (recv is cancel-safe).
                        wait = CURSOR_SAVE_SECONDS if knot in self._unsaved else None
                        frame = await asyncio.wait_for(ws.recv(decode=False), wait)
                    except TimeoutError:
                        await self._flush_cursor(knot)
                        continue
                    except ConnectionClosedOK:
                        return
                    received_ns = time.time_ns()
                    link.frames += 1
                    self._skip_to.pop(knot, None)
                    if await self.handle_frame(knot, frame, received_ns=received_ns) == "recorded":
                        link.recorded += 1
            finally:
                await self._flush_cursor(knot)

    async def handle_frame(self, knot: str, frame: bytes | str, *, received_ns: int) -> Outcome:
        """Record a pipeline event, or say in the log why not; then store the cursor."""
        size = len(frame.encode() if isinstance(frame, str) else frame)
        if size > MAX_FRAME_BYTES:
            log.warning("knot %s: refused a frame of %d bytes (at most %d)", knot, size, MAX_FRAME_BYTES)
            return "skipped"
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            log.warning("knot %s: skipped a frame that is not JSON", knot)
            return "skipped"
        rkey = message.get("rkey") if isinstance(message, dict) else None
        if not isinstance(rkey, str) or not _is_rkey(rkey):
            # Without a record key there is no telling where in the stream it was: no cursor move.
            log.warning("knot %s: skipped a frame without a valid rkey", knot)
            return "skipped"
        mark = cursor_mark(rkey, received_ns)
        if message.get("nsid") == REF_UPDATE_NSID:
            try:
                outcome = await self._ref_update(knot, rkey, message.get("event"))
            except SkipEvent as exc:
                log.warning("knot %s: skipped ref update %s: %s", knot, rkey, exc)
                outcome = "skipped"
            await self._store_cursor(knot, mark)
            return outcome
        if message.get("nsid") != PIPELINE_NSID:
            # Other records (pushes, repo changes) need no durable progress of their own: saving
            # it at most once a second keeps a busy knot from costing one commit per frame.
            await self._note_cursor(knot, mark)
            return "ignored"
        try:
            outcome = await self._pipeline(knot, rkey, message.get("event"))
        except SkipEvent as exc:
            log.warning("knot %s: skipped pipeline %s: %s", knot, rkey, exc)
            outcome = "skipped"
        await self._store_cursor(knot, mark)
        return outcome

    async def _pipeline(self, knot: str, rkey: str, event: Any) -> Outcome:
        dispatch = parse_pipeline_event(knot=knot, rkey=rkey, event=event)
        registered = None
        async with self.sessionmaker() as session:
            for did in (dispatch.repo_did, *dispatch.other_dids):
                registered = await repo_service.find(
                    session=session, knot=knot, did=did, name=dispatch.repo_name
                )
                if registered is not None:
                    dispatch = replace(dispatch, repo_did=did, other_dids=())
                    break
        if registered is None:
            log.debug(
                "knot %s: ignored pipeline %s of %s/%s: not registered here",
                knot,
                rkey,
                dispatch.repo_did,
                dispatch.repo_name,
            )
            return "ignored"
        attempt = 1
        while True:
            try:
                result = await self.flows.knot_pipeline(dispatch)
                break
            except InvalidRequest as exc:
                raise SkipEvent(exc.message) from None
            except RateLimitExceeded as exc:
                # No one waits for an answer: the event is logged and nothing is recorded.
                raise SkipEvent(f"refused: {exc.message}") from None
            except UpstreamFailure as exc:
                if attempt == UPSTREAM_ATTEMPTS:
                    raise SkipEvent(f"the knot failed {attempt} times: {exc.message}") from None
                log.warning("knot %s pipeline %s: %s; trying again", knot, rkey, exc.message)
                await asyncio.sleep(self.backoff_start * 2**attempt)
                attempt += 1
        if result.created:
            return "recorded"
        return "redelivered" if result.pipeline is not None else "skipped"

    async def _ref_update(self, knot: str, rkey: str, event: Any) -> Outcome:
        try:
            record = RefUpdateRecord.model_validate(event)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "event"
            raise SkipEvent(f"not an sh.tangled.git.refUpdate record: {where}: {first['msg']}") from None
        async with self.sessionmaker() as session:
            registered = await repo_service.find_pushed(
                session=session,
                knot=knot,
                owner_did=record.owner_did,
                name=record.repo_name,
                repo_did=record.repo,
            )
        if registered is None:
            return "ignored"
        if record.new_sha == ZERO_SHA:
            log.info(
                "knot %s: %s of %s/%s was deleted: nothing runs",
                knot,
                record.ref,
                registered.did,
                registered.name,
            )
            return "ignored"
        if not COMMIT_RE.match(record.new_sha) or not COMMIT_RE.match(record.old_sha):
            raise SkipEvent(f"a ref update without full commit ids ({record.old_sha!r} → {record.new_sha!r})")
        if SKIP_CI_OPTIONS & set(record.push_options):
            log.info("knot %s: push %s asked to skip CI", knot, rkey)
            return "ignored"
        repo_meta: dict[str, Any] = {"knot": knot, "did": registered.did, "repo": registered.name}
        if registered.repo_did:
            repo_meta["repoDid"] = registered.repo_did
        push = run_flows.PushedRef(
            knot=knot,
            rkey=rkey,
            repo_did=registered.did,
            repo_name=registered.name,
            ref=record.ref,
            old_sha=record.old_sha.lower(),
            new_sha=record.new_sha.lower(),
            changed_paths=tuple(record.changed_files) if record.changed_files is not None else None,
            trigger={
                "kind": "push",
                "repo": repo_meta,
                "push": {
                    "ref": record.ref,
                    "newSha": record.new_sha.lower(),
                    "oldSha": record.old_sha.lower(),
                },
            },
        )
        attempt = 1
        while True:
            try:
                result = await self.flows.knot_push(push)
                break
            except InvalidRequest as exc:
                raise SkipEvent(exc.message) from None
            except UpstreamFailure as exc:
                if attempt == UPSTREAM_ATTEMPTS:
                    raise SkipEvent(f"the knot failed {attempt} times: {exc.message}") from None
                log.warning("knot %s push %s: %s; trying again", knot, rkey, exc.message)
                await asyncio.sleep(self.backoff_start * 2**attempt)
                attempt += 1
        if result.created:
            return "recorded"
        return "redelivered" if result.pipeline is not None else "ignored"

    async def _load_cursor(self, knot: str) -> int | None:
        async with self.sessionmaker() as session:
            row = await session.get(KnotCursor, knot)
            return row.cursor if row else None

    async def _note_cursor(self, knot: str, cursor: int) -> None:
        """Remember where we are; store it when the last store is over a second old."""
        self._unsaved[knot] = cursor
        if time.monotonic() - self._saved_at.get(knot, 0.0) >= CURSOR_SAVE_SECONDS:
            await self._store_cursor(knot, cursor)

    async def _flush_cursor(self, knot: str) -> None:
        cursor = self._unsaved.get(knot)
        if cursor is not None:
            await self._store_cursor(knot, cursor)

    async def _store_cursor(self, knot: str, cursor: int) -> None:
        """Where the next connection resumes: the last handled frame's mark, not a running maximum
        (a first reading of our clock is replaced by the knot's own once a TID arrives)."""
        async with self.sessionmaker() as session:
            changed = await session.execute(
                update(KnotCursor).where(KnotCursor.knot == knot).values(cursor=cursor, updated_at=utcnow())
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                session.add(KnotCursor(knot=knot, cursor=cursor))
            try:
                await session.commit()
            except IntegrityError:
                # Another spindle process sharing the database stored it first: as good a place.
                await session.rollback()
        self._unsaved.pop(knot, None)
        self._saved_at[knot] = time.monotonic()

    async def _forget_cursor(self, knot: str) -> None:
        async with self.sessionmaker() as session:
            await session.execute(delete(KnotCursor).where(KnotCursor.knot == knot))
            await session.commit()
