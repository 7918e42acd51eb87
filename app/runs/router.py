"""XRPC procedures on runs: the manual trigger.

The trigger is a plain Starlette route placed first in the app's route table, not a FastAPI
route: it authenticates before reading its body and validates that body against the lexicon
itself, so FastAPI's dependency solving, body handling and response serialization would do
nothing for it, and measured in-process they cost about 100 µs per request (a fifth of the whole
trigger on the warm path; bench/bench_trigger.py). Its errors still go through the app's
exception handlers, and its OpenAPI operation is built from the lexicon (app.xrpc.openapi).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.auth.deps import authenticate
from app.context import AppContext
from app.runs import schemas
from app.xrpc.body import read_json_object
from app.xrpc.errors import BACKEND_UNAVAILABLE, DATABASE_UNAVAILABLE, XrpcError


async def trigger(request: Request) -> JSONResponse:
    """Run a repo's workflows at a commit; the body is read only after the token is verified."""
    ctx: AppContext = request.app.state.ctx
    try:
        actor = await authenticate(request, schemas.TRIGGER_NSID)
        body = await read_json_object(request, max_bytes=schemas.MAX_BODY_BYTES)
        req = schemas.parse_trigger_input(body)
        out = await ctx.flows.trigger(actor=actor, req=req)
    except XrpcError as exc:
        ctx.metrics.trigger_result(exc.error)
        raise
    except DATABASE_UNAVAILABLE + BACKEND_UNAVAILABLE:
        ctx.metrics.trigger_result("ServiceUnavailable")  # what the app's error handler answers
        raise
    except Exception:
        ctx.metrics.trigger_result("InternalServerError")
        raise
    ctx.metrics.trigger_result("accepted")
    return JSONResponse(out)


# First in the app's routes (see create_app): matched before every other pattern.
routes = [Route(f"/xrpc/{schemas.TRIGGER_NSID}", trigger, methods=["POST"], name="trigger")]
