"""Routes of Tangled's CI API (`sh.tangled.ci.*`); what they do is in app/ci/service.py.

    GET  /xrpc/sh.tangled.ci.queryPipelines           public
    GET  /xrpc/sh.tangled.ci.getPipeline              public
    WS   /xrpc/sh.tangled.ci.subscribePipelineLogs    public; DAG-CBOR event-stream frames (frames.py)
    GET  /xrpc/sh.tangled.ci.describeWorkflowDefinition   public
    POST /xrpc/sh.tangled.ci.cancelPipeline           service auth (lxm = the method)
    POST /xrpc/sh.tangled.ci.triggerPipeline          service auth (lxm = the method)

The procedures read their body only after the token is verified (401 before any word about it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse

from app.auth.deps import service_auth
from app.ci import frames, schemas, service
from app.deps import CtxDep, SessionDep
from app.runs.models import WorkflowRun
from app.streams import watch
from app.streams.feeds import Feeds
from app.streams.router import FeedsDep, pump_until_gone
from app.xrpc.body import read_json_object
from app.xrpc.errors import InvalidRequest, XrpcError

router = APIRouter(tags=["tangled-ci"])

CancelIssuerDep = Annotated[str, Depends(service_auth(schemas.CANCEL_NSID))]
TriggerIssuerDep = Annotated[str, Depends(service_auth(schemas.TRIGGER_NSID))]


@router.get(f"/xrpc/{schemas.QUERY_NSID}")
async def query_pipelines(request: Request, session: SessionDep) -> JSONResponse:
    """A repo's pipelines, newest first: by commits and trigger kinds, a page at a time."""
    q = schemas.parse_query(request.query_params.multi_items())
    return JSONResponse(await service.query_pipelines(session=session, q=q))


@router.get(f"/xrpc/{schemas.GET_NSID}")
async def get_pipeline(request: Request, session: SessionDep) -> JSONResponse:
    """One pipeline by its id."""
    tid = schemas.parse_get(request.query_params.multi_items())
    return JSONResponse(await service.get_pipeline(session=session, tid=tid))


@router.get(f"/xrpc/{schemas.DESCRIBE_NSID}")
async def describe_workflow_definition(request: Request, ctx: CtxDep, session: SessionDep) -> JSONResponse:
    """The workflow files at a commit, and their fingerprint."""
    req = schemas.parse_describe(request.query_params.multi_items())
    return JSONResponse(await service.describe(session=session, knot=ctx.knot, req=req))


@router.post(f"/xrpc/{schemas.CANCEL_NSID}")
async def cancel_pipeline(
    request: Request, issuer: CancelIssuerDep, ctx: CtxDep, session: SessionDep
) -> JSONResponse:
    """Cancel a pipeline, or some of its workflows."""
    req = schemas.parse_cancel(await read_json_object(request, max_bytes=schemas.MAX_BODY_BYTES))
    await service.cancel_pipeline(
        session=session, settings=ctx.settings, scheduler=ctx.scheduler, actor=issuer, req=req
    )
    return JSONResponse({})


@router.post(f"/xrpc/{schemas.TRIGGER_NSID}")
async def trigger_pipeline(
    request: Request, issuer: TriggerIssuerDep, ctx: CtxDep, session: SessionDep
) -> JSONResponse:
    """Run a repo's workflows at a commit; the new pipeline's at-uri."""
    req = schemas.parse_trigger(await read_json_object(request, max_bytes=schemas.MAX_BODY_BYTES))
    out = await service.trigger_pipeline(
        session=session,
        settings=ctx.settings,
        knot=ctx.knot,
        starter=ctx.flows.starter,
        actor=issuer,
        req=req,
    )
    return JSONResponse(out)


# -- subscribePipelineLogs -------------------------------------------------------------------


@router.get(f"/xrpc/{schemas.SUBSCRIBE_NSID}", include_in_schema=False)
async def subscribe_without_websocket() -> JSONResponse:
    raise InvalidRequest(f"{schemas.SUBSCRIBE_NSID} is a subscription: connect with a WebSocket")


async def _refuse(websocket: WebSocket, exc: XrpcError) -> None:
    """Refuse before the stream starts: an HTTP error where the server can, else an error frame."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(exc.to_response())
        return
    await websocket.accept()
    await websocket.send_bytes(frames.error(exc.error, exc.message))
    await websocket.close(code=1008 if exc.status_code < 500 else 1011, reason=exc.error)


async def _merged(feeds: Feeds, runs: Sequence[WorkflowRun]) -> AsyncGenerator[bytes, None]:
    """The frames of every run's log, each run's in order, as they come; ends when all runs ended."""
    # A follower puts its frames, then None when its run is over, or the exception it died of.
    queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue(maxsize=64)

    async def follow(run: WorkflowRun) -> None:
        try:
            batches = watch.follow_logs(feeds=feeds, run_id=run.id)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    for item in batch:
                        await queue.put(frames.message(*frames.log_message(run.name, item)))
        except Exception as exc:
            await queue.put(exc)
        else:
            await queue.put(None)

    tasks = [asyncio.create_task(follow(run), name=f"ci-logs-{run.id}") for run in runs]
    try:
        left = len(tasks)
        while left:
            frame = await queue.get()
            if frame is None:
                left -= 1
            elif isinstance(frame, Exception):
                raise frame
            else:
                yield frame
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@router.websocket(f"/xrpc/{schemas.SUBSCRIBE_NSID}")
async def subscribe_pipeline_logs(websocket: WebSocket, ctx: CtxDep, feeds: FeedsDep) -> None:
    """The logs of a pipeline's workflows (or the named ones), history then live; closes (1000) when
    they have all finished."""
    try:
        req = schemas.parse_subscribe(websocket.query_params.multi_items())
        async with ctx.sessionmaker() as session:
            pipeline = await service.find_pipeline(session=session, tid=req.pipeline)
        if pipeline is None:
            raise schemas.PipelineNotFound(f"no pipeline {req.pipeline} on this spindle")
        runs = service.select_runs(pipeline, req.workflows)
    except XrpcError as exc:
        await _refuse(websocket, exc)
        return
    await websocket.accept()

    async def pump() -> None:
        stream = _merged(feeds, runs)
        async with contextlib.aclosing(stream):
            async for frame in stream:
                await websocket.send_bytes(frame)
        await websocket.close(code=1000, reason="pipeline finished")

    await pump_until_gone(websocket, pump())
