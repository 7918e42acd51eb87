"""XRPC procedures on runs: the manual trigger."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.auth.deps import service_auth
from app.context import AppContext
from app.runs import schemas, service
from app.xrpc.body import read_json_object

router = APIRouter()

TriggerIssuerDep = Annotated[str, Depends(service_auth(schemas.TRIGGER_NSID))]


@router.post(f"/xrpc/{schemas.TRIGGER_NSID}")
async def trigger(request: Request, issuer: TriggerIssuerDep) -> JSONResponse:
    """Run a repo's workflows at a commit; the body is read only after the token is verified."""
    # Not CtxDep: one dependency level less on the hot path (see app.auth.deps).
    ctx: AppContext = request.app.state.ctx
    body = await read_json_object(request, max_bytes=schemas.MAX_BODY_BYTES)
    req = schemas.parse_trigger_input(body)
    out = await service.trigger(
        sessionmaker=ctx.sessionmaker,
        writer=ctx.writer,
        registrations=ctx.registrations,
        knot=ctx.knot,
        settings=ctx.settings,
        broker=ctx.broker,
        scheduler=ctx.scheduler,
        actor=issuer,
        req=req,
    )
    return JSONResponse(out)
