"""Tangled's secrets methods, as its repo settings page calls them on the repo's spindle.

    POST /xrpc/sh.tangled.repo.addSecret      {repo: <at-uri>, key, value}  → {}
    POST /xrpc/sh.tangled.repo.removeSecret   {repo, key}                   → {}
    GET  /xrpc/sh.tangled.repo.listSecrets?repo=<at-uri>  → {secrets: [{repo, key, createdAt, createdBy}]}

Each takes a service-auth token whose `lxm` is the method (401 otherwise, before anything about
the body is said); the issuer must be the repo's owner, a collaborator or the spindle's owner
(403). Errors are listed in app.secrets.service.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.auth.deps import service_auth
from app.database import utcnow
from app.deps import CtxDep, SessionDep
from app.repos.models import Repo
from app.secrets import service
from app.secrets.models import RepoSecret
from app.xrpc.body import read_json_object
from app.xrpc.errors import InvalidRequest

ADD_NSID = "sh.tangled.repo.addSecret"
REMOVE_NSID = "sh.tangled.repo.removeSecret"
LIST_NSID = "sh.tangled.repo.listSecrets"
MAX_BODY_BYTES = 8 * 1024

router = APIRouter()

AddIssuerDep = Annotated[str, Depends(service_auth(ADD_NSID))]
RemoveIssuerDep = Annotated[str, Depends(service_auth(REMOVE_NSID))]
ListIssuerDep = Annotated[str, Depends(service_auth(LIST_NSID))]


def _iso(secret: RepoSecret) -> str:
    moment = secret.created_at or utcnow()
    if moment.tzinfo is None:  # SQLite gives back what it stored (UTC) without its zone
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def repo_uri(repo: Repo, asked: str) -> str:
    """The at-uri a listing names the repo by: its record's when known, else the one asked for."""
    return f"at://{repo.did}/sh.tangled.repo/{repo.rkey}" if repo.rkey else asked


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    # Unknown fields are ignored, as lexicon validation does; the required ones are checked below.
    for name in sorted(allowed):
        if name not in body:
            raise InvalidRequest(f"{name}: is required")


@router.post(f"/xrpc/{ADD_NSID}")
async def add_secret(
    request: Request, issuer: AddIssuerDep, ctx: CtxDep, session: SessionDep
) -> JSONResponse:
    """Add a secret to a repo; a key it already has is refused."""
    body = await read_json_object(request, max_bytes=MAX_BODY_BYTES)
    _only(body, {"repo", "key", "value"})
    key = service.check_key(body["key"])
    value = service.check_value(body["value"])
    repo = service.authorize(
        await service.resolve_repo(session=session, repo=body["repo"]),
        actor=issuer,
        spindle_owner=ctx.settings.owner,
    )
    await service.add(session=session, cipher=ctx.secrets, repo=repo, key=key, value=value, created_by=issuer)
    return JSONResponse({})


@router.post(f"/xrpc/{REMOVE_NSID}")
async def remove_secret(
    request: Request, issuer: RemoveIssuerDep, ctx: CtxDep, session: SessionDep
) -> JSONResponse:
    """Remove a repo's secret."""
    body = await read_json_object(request, max_bytes=MAX_BODY_BYTES)
    _only(body, {"repo", "key"})
    key = service.check_key(body["key"])
    repo = service.authorize(
        await service.resolve_repo(session=session, repo=body["repo"]),
        actor=issuer,
        spindle_owner=ctx.settings.owner,
    )
    await service.remove(session=session, repo=repo, key=key)
    return JSONResponse({})


@router.get(f"/xrpc/{LIST_NSID}")
async def list_secrets(
    request: Request, issuer: ListIssuerDep, ctx: CtxDep, session: SessionDep
) -> JSONResponse:
    """A repo's secrets: keys, when and by whom they were added; never a value."""
    asked = request.query_params.getlist("repo")
    if len(asked) != 1:
        raise InvalidRequest("repo: is required, once" if not asked else "repo: must be given once")
    repo = service.authorize(
        await service.resolve_repo(session=session, repo=asked[0]),
        actor=issuer,
        spindle_owner=ctx.settings.owner,
    )
    name = repo_uri(repo, asked[0])
    rows = await service.list_for(session=session, repo=repo)
    return JSONResponse(
        {
            "secrets": [
                {"repo": name, "key": row.key, "createdAt": _iso(row), "createdBy": row.created_by}
                for row in rows
            ]
        }
    )
