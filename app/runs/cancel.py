"""`sh.tangled.pipeline.cancelPipeline`: stop a queued or running workflow run.

The body is Tangled's lexicon (lexicons/sh.tangled.pipeline.cancelPipeline.json):

    {"repo": "at://<owner DID>/sh.tangled.repo/<record key>",
     "pipeline": "at://did:web:<knot, ':' as %3A>/sh.tangled.pipeline/<pipelineRkey>",
     "workflow": "<stem>"}

The repo is named by its record's at-uri: Tangled's record keys are TIDs, found through the key
the repo was registered with (`Repo.rkey`); a repo registered without one is found by its name,
which is how 2025 clients built the uri (repos_service.find_by_uri). The caller needs the same
rights as for triggering that repo (its token's issuer is the actor).
The answer is `{}` (the lexicon has no output); a run that already finished is left as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.deps import service_auth
from app.config import DID_RE, Settings, is_valid_host
from app.deps import CtxDep, SessionDep
from app.repos import service as repos_service
from app.runs.models import Status
from app.runs.schemas import RKEY_RE
from app.streams import service as streams_service
from app.xrpc.body import read_json_object
from app.xrpc.errors import Forbidden, InvalidRequest, NotFound
from app.xrpc.lexicon import lexicons

if TYPE_CHECKING:
    from app.engine.queue import Scheduler

CANCEL_NSID = "sh.tangled.pipeline.cancelPipeline"
MAX_BODY_BYTES = 16 * 1024
MAX_WORKFLOW_CHARS = 255

# Tangled's own spindle writes the knot into did:web unescaped; the did:web form escapes ':'.
_PIPELINE_URI_RE = re.compile(r"^at://did:web:(?P<knot>[^/]+)/sh\.tangled\.pipeline/(?P<rkey>[^/]+)\Z")

router = APIRouter()

CancelIssuerDep = Annotated[str, Depends(service_auth(CANCEL_NSID))]


@dataclass(frozen=True)
class CancelInput:
    repo: repos_service.RepoUri
    knot: str
    pipeline_rkey: str
    workflow: str


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


_validate_lexicon = lexicons().input_validator(CANCEL_NSID)


def parse_cancel_input(body: Any) -> CancelInput:
    """Check a decoded body against the lexicon and the URI shapes; 400 naming the field otherwise."""
    _validate_lexicon(body)
    repo, pipeline, workflow = body["repo"], body["pipeline"], body["workflow"]
    repo_uri = repos_service.parse_repo_uri(repo)
    if repo_uri is None or not DID_RE.match(repo_uri.did):
        raise InvalidRequest(f"repo must be at://<DID>/sh.tangled.repo/<record key>, not {_shown(repo)}")
    pipeline_match = _PIPELINE_URI_RE.match(pipeline)
    if not pipeline_match:
        raise InvalidRequest(
            f"pipeline must be at://did:web:<knot>/sh.tangled.pipeline/<rkey>, not {_shown(pipeline)}"
        )
    knot = unquote(pipeline_match["knot"])
    if not is_valid_host(knot):
        raise InvalidRequest(f"pipeline names a knot {_shown(knot)} that is not a host[:port]")
    rkey = pipeline_match["rkey"]
    if rkey in (".", "..") or not RKEY_RE.match(rkey):
        raise InvalidRequest(f"pipeline has a record key {_shown(rkey)} that is not a valid rkey")
    if not workflow or len(workflow) > MAX_WORKFLOW_CHARS or any(ord(c) < 32 for c in workflow):
        raise InvalidRequest(
            f"workflow must be a workflow file's name without extension, not {_shown(workflow)}"
        )
    return CancelInput(
        repo=repo_uri,
        knot=knot,
        pipeline_rkey=rkey,
        workflow=workflow,
    )


async def cancel(
    *, session: AsyncSession, settings: Settings, scheduler: Scheduler, actor: str, req: CancelInput
) -> None:
    """Authorize `actor` on the repo, find the run, and cancel it unless it already finished."""
    found = await repos_service.find_by_uri(session=session, uri=req.repo)
    if found is None:
        raise Forbidden(f"the repo {req.repo} is not served by this spindle")
    repo = repos_service.check_rights(
        found, spindle_owner=settings.owner, actor=actor, knot=found.knot, did=found.did, name=found.name
    )
    run = await streams_service.find_run(
        session=session, knot=req.knot, rkey=req.pipeline_rkey, workflow=req.workflow
    )
    # A run of another repo is "not found" here: rights on one repo reveal nothing of others.
    if run is None or (run.pipeline.knot, run.pipeline.repo_did, run.pipeline.repo_name) != (
        repo.knot,
        repo.did,
        repo.name,
    ):
        raise NotFound(
            f"{repo.did}/{repo.name} has no workflow {req.workflow!r} "
            f"in pipeline {req.pipeline_rkey!r} on knot {req.knot}"
        )
    # Nothing is held open while the engine stops the run.
    await session.commit()
    if not Status(run.status).is_finished:
        await scheduler.cancel(run.id)


@router.post(f"/xrpc/{CANCEL_NSID}")
async def cancel_pipeline(
    request: Request, issuer: CancelIssuerDep, ctx: CtxDep, session: SessionDep
) -> JSONResponse:
    """Cancel a workflow run; the body is read only after the token is verified."""
    body = await read_json_object(request, max_bytes=MAX_BODY_BYTES)
    req = parse_cancel_input(body)
    await cancel(session=session, settings=ctx.settings, scheduler=ctx.scheduler, actor=issuer, req=req)
    return JSONResponse({})
