"""Live logs, status and events of runs: WebSocket, Server-Sent Events, text and a run page.

    GET /logs/{knot}/{rkey}/{workflow}     WebSocket: Tangled JSON log lines, then close (1000)
                                           plain HTTP: the log so far as text
    GET /status/{knot}/{rkey}/{workflow}   JSON status; `Accept: text/event-stream` for SSE
    GET /status/{knot}/{rkey}              every workflow's JSON status, as {"knot", "pipelineRkey",
                                           "workflows": [...]}; `Accept: text/event-stream` for one
                                           SSE stream of all their transitions, ending when all
                                           have finished (what the run page uses: browsers allow
                                           six HTTP/1.1 connections per host, SSE streams included)
    GET /events?cursor=N                   WebSocket: sh.tangled.pipeline.status frames after
                                           event id N (or Unix nanoseconds, as Tangled's appview
                                           sends), then live; without a cursor, live only
    GET /runs/{knot}/{rkey}                the run page (HTML)

Knots carry ports (`127.0.0.1:5555`); `{knot}` matches any single path segment, ':' included, so
the two status routes never shadow each other: one has two segments after /status, the other three.
SSE event ids are status event ids; a client sending one back as Last-Event-ID resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from app.context import AppContext
from app.deps import CtxDep
from app.ratelimit import TokenBuckets
from app.runs import service as runs_service
from app.runs.models import Status, WorkflowRun
from app.streams import page, service, watch
from app.streams.feeds import Feeds
from app.streams.limits import WatcherSlots
from app.xrpc.errors import InvalidRequest, NotFound, XrpcError

router = APIRouter(tags=["streams"])

KEEPALIVE_SECONDS = 15.0
SSE_RETRY_MS = 3000
STATIC_FILES = {"run.js": "text/javascript; charset=utf-8", "run.css": "text/css; charset=utf-8"}
TEXT_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def get_feeds(ctx: CtxDep) -> Feeds:
    """This process's database feeds, made on first use (they hold no resources while idle)."""
    feeds = ctx.extras.get("stream_feeds")
    if feeds is None:
        feeds = ctx.extras["stream_feeds"] = Feeds(sessionmaker=ctx.sessionmaker, broker=ctx.broker)
    return feeds  # type: ignore[no-any-return]


FeedsDep = Annotated[Feeds, Depends(get_feeds)]


def get_slots(ctx: CtxDep) -> WatcherSlots:
    """This process's watcher caps (SPINDLE_MAX_WATCHERS, SPINDLE_MAX_WATCHERS_PER_ADDRESS)."""
    slots = ctx.extras.get("watcher_slots")
    if slots is None:
        slots = ctx.extras["watcher_slots"] = WatcherSlots(
            total=ctx.settings.max_watchers,
            per_address=ctx.settings.max_watchers_per_address,
            refused=ctx.metrics.refusal,
        )
    return slots  # type: ignore[no-any-return]


SlotsDep = Annotated[WatcherSlots, Depends(get_slots)]


def _replay_budget(ctx: AppContext) -> TokenBuckets:
    """Events a second all /events replays of this process share (SPINDLE_EVENTS_REPLAY_PER_SECOND)."""
    budget = ctx.extras.get("events_replay_budget")
    if budget is None:
        rate = ctx.settings.events_replay_per_second
        budget = ctx.extras["events_replay_budget"] = TokenBuckets(per_minute=rate * 60, burst=rate)
    return budget  # type: ignore[no-any-return]


def _address(connection: HTTPConnection) -> str | None:
    return connection.client.host if connection.client else None


class WatcherStream(StreamingResponse):
    """An SSE stream that holds a watcher slot until it ends, and ends when its client stops
    taking what it is sent for `send_timeout` seconds."""

    def __init__(
        self, content: Any, *, slot: contextlib.ExitStack, send_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            async with asyncio.timeout(self.send_timeout):
                await send(message)

        with self.slot:
            try:
                await super().__call__(scope, receive, timed_send)
            except TimeoutError:
                # metric: streams closed because their client stopped reading
                return


def _no_run(knot: str, rkey: str, workflow: str) -> NotFound:
    return NotFound(f"no workflow {workflow!r} in pipeline {rkey!r} of knot {knot!r}")


async def _find_run(ctx: CtxDep, knot: str, rkey: str, workflow: str) -> WorkflowRun | None:
    # A short session of its own: streams outlive requests, and must not hold a connection.
    async with ctx.sessionmaker() as session:
        return await service.find_run(session=session, knot=knot, rkey=rkey, workflow=workflow)


async def _deny(websocket: WebSocket, error: XrpcError) -> None:
    """Refuse the handshake with an XRPC error body, or close with 4000 + status where we can't."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error.to_response())
        return
    await websocket.accept()
    await websocket.close(code=4000 + error.status_code, reason=error.message[:120])


def _hold_slot(websocket: WebSocket, slots: WatcherSlots, stack: contextlib.ExitStack) -> XrpcError | None:
    """Take a watcher slot into `stack`; the error to refuse the handshake with when none is free."""
    try:
        stack.enter_context(slots.hold(_address(websocket)))
    except XrpcError as exc:
        return exc
    return None


async def _serve(
    websocket: WebSocket,
    frames: AsyncGenerator[str, None],
    *,
    reason: str,
    send_timeout: float,
    close_with: Callable[[], tuple[int, str]] | None = None,
) -> None:
    """Send `frames`, then close normally; stop as soon as the client goes away, or when it takes no
    frame for `send_timeout` seconds (it stopped reading: its frames would pile up here)."""

    async def pump() -> None:
        async with contextlib.aclosing(frames):
            async for frame in frames:
                try:
                    async with asyncio.timeout(send_timeout):
                        await websocket.send_text(frame)
                except TimeoutError:
                    # metric: streams closed because their client stopped reading
                    return
        code, why = close_with() if close_with is not None else (1000, reason)
        await websocket.close(code=code, reason=why)

    await pump_until_gone(websocket, pump())


async def pump_until_gone(websocket: WebSocket, pump: Coroutine[Any, Any, None]) -> None:
    """Run `pump` (it sends and closes) until it ends or the client goes away, whichever is first."""

    async def client_gone() -> None:
        # What the client sends is ignored; reading is how a disconnect is noticed.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    tasks = [asyncio.create_task(pump), asyncio.create_task(client_gone())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        # A client that leaves mid-send is not an error of ours.
        if isinstance(result, BaseException) and not isinstance(
            result, asyncio.CancelledError | WebSocketDisconnect
        ):
            raise result


# --- logs --------------------------------------------------------------------------------


@router.websocket("/logs/{knot}/{rkey}/{workflow}")
async def logs_socket(
    websocket: WebSocket, knot: str, rkey: str, workflow: str, ctx: CtxDep, feeds: FeedsDep, slots: SlotsDep
) -> None:
    with contextlib.ExitStack() as slot:
        refused = _hold_slot(websocket, slots, slot)
        if refused is not None:
            await _deny(websocket, refused)
            return
        await _logs_socket(websocket, knot, rkey, workflow, ctx, feeds)


async def _logs_socket(
    websocket: WebSocket, knot: str, rkey: str, workflow: str, ctx: AppContext, feeds: Feeds
) -> None:
    run = await _find_run(ctx, knot, rkey, workflow)
    if run is None:
        await _deny(websocket, _no_run(knot, rkey, workflow))
        return
    await websocket.accept()

    async def frames() -> AsyncGenerator[str, None]:
        batches = watch.follow_logs(feeds=feeds, run_id=run.id)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for item in batch:
                    yield service.encode_log_line(item)

    with ctx.metrics.watching("logs"):
        await _serve(
            websocket, frames(), reason="log stream complete", send_timeout=ctx.settings.stream_send_timeout
        )


@router.get("/logs/{knot}/{rkey}/{workflow}", response_class=PlainTextResponse)
async def logs_text(knot: str, rkey: str, workflow: str, ctx: CtxDep) -> StreamingResponse:
    """The log so far as text: one line per data line, step starts and ends marked."""
    run = await _find_run(ctx, knot, rkey, workflow)
    if run is None:
        raise _no_run(knot, rkey, workflow)

    async def lines() -> AsyncGenerator[str, None]:
        after = 0
        while True:
            async with ctx.sessionmaker() as session:
                items = await service.log_items_after(session=session, run_id=run.id, after=after)
            if items:
                yield "".join(service.render_log_line(item) + "\n" for item in items)
                after = int(items[-1]["id"])
            if len(items) < service.PAGE_SIZE:
                return

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8", headers=TEXT_HEADERS)


# --- status ------------------------------------------------------------------------------


def _last_event_id(raw: str | None) -> int | None:
    """An id we could have sent (ASCII digits, below 2**63), else None: the stream starts over.
    ("²".isdigit() is true and int() of 5000 digits raises: both were 500s.)"""
    if not raw or not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) >= 2**63:
        return None
    return int(raw)


def _wants_event_stream(accept: str | None) -> bool:
    return any(part.split(";")[0].strip() == "text/event-stream" for part in (accept or "").split(","))


def _sse(item: Mapping[str, Any]) -> str:
    data = json.dumps(service.transition(item), ensure_ascii=False)
    return f"id: {item['id']}\ndata: {data}\n\n"


async def _status_stream(
    request: Request, ctx: AppContext, feeds: Feeds, runs: Sequence[WorkflowRun], last_event_id: str | None
) -> Response:
    """`runs`' transitions as Server-Sent Events: now (or after Last-Event-ID), then live, to the end."""
    slot = contextlib.ExitStack()
    slot.enter_context(get_slots(ctx).hold(_address(request)))  # refused: 429 / 503, nothing held
    try:
        return await _status_events(ctx, feeds, runs, last_event_id, slot)
    except BaseException:
        slot.close()
        raise


async def _status_events(
    ctx: AppContext,
    feeds: Feeds,
    runs: Sequence[WorkflowRun],
    last_event_id: str | None,
    slot: contextlib.ExitStack,
) -> Response:
    run_ids = [run.id for run in runs]
    resume = _last_event_id(last_event_id)
    if resume is not None and all(Status(run.status).is_finished for run in runs):
        async with ctx.sessionmaker() as session:
            latest = await service.latest_status_items(session=session, run_ids=run_ids)
        if resume >= max((int(item["id"]) for item in latest), default=0):
            # An EventSource reconnects after the stream ends; 204 tells it there is nothing more.
            slot.close()
            return Response(status_code=204)

    async def stream() -> AsyncGenerator[str, None]:
        with ctx.metrics.watching("status"):
            yield f"retry: {SSE_RETRY_MS}\n\n"
            batches = watch.follow_status(feeds=feeds, run_ids=run_ids, after=resume, idle=KEEPALIVE_SECONDS)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    yield "".join(_sse(item) for item in batch) if batch else ": keep-alive\n\n"

    return WatcherStream(
        stream(),
        slot=slot,
        send_timeout=ctx.settings.stream_send_timeout,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/status/{knot}/{rkey}", response_model=None)
async def pipeline_status(
    request: Request,
    knot: str,
    rkey: str,
    ctx: CtxDep,
    feeds: FeedsDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Every workflow's status as JSON, or one Server-Sent Events stream of all their transitions."""
    async with ctx.sessionmaker() as session:
        pipeline = await service.find_pipeline(session=session, knot=knot, rkey=rkey)
    if pipeline is None:
        raise NotFound(f"no pipeline {rkey!r} of knot {knot!r}")
    if _wants_event_stream(request.headers.get("accept")):
        return await _status_stream(request, ctx, feeds, pipeline.workflow_runs, last_event_id)
    async with ctx.sessionmaker() as session:
        workflows = await service.status_documents(
            session=session, settings=ctx.settings, pipeline=pipeline, runs=pipeline.workflow_runs
        )
    return JSONResponse({"knot": pipeline.knot, "pipelineRkey": pipeline.rkey, "workflows": workflows})


@router.get("/status/{knot}/{rkey}/{workflow}", response_model=None)
async def run_status(
    request: Request,
    knot: str,
    rkey: str,
    workflow: str,
    ctx: CtxDep,
    feeds: FeedsDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """The run's status as JSON, or as Server-Sent Events: now, each transition, then the end."""
    run = await _find_run(ctx, knot, rkey, workflow)
    if run is None:
        raise _no_run(knot, rkey, workflow)
    if _wants_event_stream(request.headers.get("accept")):
        return await _status_stream(request, ctx, feeds, [run], last_event_id)
    async with ctx.sessionmaker() as session:
        (doc,) = await service.status_documents(
            session=session, settings=ctx.settings, pipeline=run.pipeline, runs=[run]
        )
    return JSONResponse(doc)


# --- events ------------------------------------------------------------------------------


def _cursor(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    # Below 2**63: it is compared with BIGINT ids.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) >= 2**63:
        raise InvalidRequest(
            f"cursor must be an event id or Unix nanoseconds (an integer from 0 to 2^63-1), not {raw[:40]!r}"
        )
    return int(raw)


@router.websocket("/events")
async def events_socket(websocket: WebSocket, ctx: CtxDep, feeds: FeedsDep, slots: SlotsDep) -> None:
    try:
        cursor = _cursor(websocket.query_params.get("cursor"))
    except InvalidRequest as exc:
        await _deny(websocket, exc)
        return
    with contextlib.ExitStack() as slot:
        refused = _hold_slot(websocket, slots, slot)
        if refused is not None:
            await _deny(websocket, refused)
            return
        await _events_socket(websocket, ctx, feeds, cursor)


async def _events_socket(websocket: WebSocket, ctx: AppContext, feeds: Feeds, cursor: int | None) -> None:
    replay_max = ctx.settings.events_replay_max
    following = watch.follow_events(
        feeds=feeds, cursor=cursor, replay_max=replay_max, replay_budget=_replay_budget(ctx)
    )
    async with following as batches:
        # Accepted only once subscribed: whatever happens after the handshake is sent.
        await websocket.accept()
        limit: list[watch.ReplayLimitReached] = []

        async def frames() -> AsyncGenerator[str, None]:
            try:
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        for item in batch:
                            yield json.dumps(service.event_frame(item), ensure_ascii=False)
            except watch.ReplayLimitReached as exc:
                limit.append(exc)

        def close_with() -> tuple[int, str]:
            if not limit:
                return 1000, "event stream ended"
            # 4000 + 429, as _deny closes: reconnecting from `cursor` continues where this ended.
            return (
                4429,
                f"replay limit of {replay_max} events reached; reconnect with cursor={limit[0].cursor}",
            )

        with ctx.metrics.watching("events"):
            await _serve(
                websocket,
                frames(),
                reason="event stream ended",
                send_timeout=ctx.settings.stream_send_timeout,
                close_with=close_with,
            )


# --- run page ----------------------------------------------------------------------------


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise NotFound(f"no static file {name!r}")
    body = resources.files("app").joinpath("static", name).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})


@router.get("/runs/{knot}/{rkey}", response_class=HTMLResponse)
async def run_page(knot: str, rkey: str, ctx: CtxDep) -> HTMLResponse:
    """The pipeline's workflows, each with a live status badge and log."""
    async with ctx.sessionmaker() as session:
        pipeline = await runs_service.find_pipeline(session=session, knot=knot, rkey=rkey)
    headers = {"Content-Security-Policy": page.CSP, "X-Content-Type-Options": "nosniff"}
    if pipeline is None:
        return HTMLResponse(page.not_found(knot, rkey), status_code=404, headers=headers)
    return HTMLResponse(page.render(pipeline), headers=headers)
