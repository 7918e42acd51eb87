"""Pull requests from Tangled's `sh.tangled.repo.pull` records (as Tangled's 2026 spindle reads them).

    pulled_request(session=, settings=, knot=, change=)  → PulledRequest, or NotRunnable saying why

A pull record is written by its author into their own repo; Jetstream carries it live (it is not
backfilled: an old pull request starts nothing). It runs when:
- its `target.repo` names a served repo: an at-uri (2025 records) or the repo's own DID (2026);
- it is branch-based: `source.branch` in the target repo itself. Patch-only pulls (no `source`)
  and pulls from forks (`source.repo` naming another repo) are not run, as Tangled's spindle
  does not run them either;
- its author may trigger the repo (its owner, a collaborator, or the spindle owner).

The commit is `source.sha` when the record carries it (2025), else the head of `source.branch`
on the repo's knot now (2026 records keep the commit only inside the patch blob). A create is the
action `opened`, an update `synchronize`. The pipeline's key is derived from (author, record key,
commit), so a replayed event starts nothing twice and a new round at a new commit runs again.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.jetstream.service import RecordChange
from app.knot.client import KnotClient
from app.repos import service as repos_service
from app.repos.models import Repo
from app.runs.flows import PulledRequest
from app.runs.schemas import COMMIT_RE
from app.xrpc.lexicon import FORMATS

PULL = "sh.tangled.repo.pull"
MAX_BRANCH = 255

_is_did = FORMATS["did"][0]


class NotRunnable(Exception):
    """The pull record does not start a run here; the message says why."""


def _branch(value: Any, field: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_BRANCH
        or any(ord(c) < 32 or c in " ~^:?*[\\" for c in value)
    ):
        raise NotRunnable(f"{field} is not a branch name")
    return value


async def _target(session: AsyncSession, value: Any) -> Repo | None:
    if not isinstance(value, str):
        raise NotRunnable("target.repo is missing")
    uri = repos_service.parse_repo_uri(value)
    if uri is not None:
        return await repos_service.find_by_uri(session=session, uri=uri)
    if _is_did(value):
        return await session.scalar(select(Repo).where(Repo.repo_did == value).order_by(Repo.id).limit(1))
    raise NotRunnable("target.repo is neither a repo at-uri nor a DID")


async def pulled_request(
    *, session: AsyncSession, settings: Settings, knot: KnotClient, change: RecordChange
) -> PulledRequest:
    """The run a pull record asks for; NotRunnable when it asks for none here."""
    record = change.record or {}
    target, source = record.get("target"), record.get("source")
    if not isinstance(target, dict):
        raise NotRunnable("a pull record without a target")
    repo = await _target(session, target.get("repo"))
    if repo is None:
        raise NotRunnable("its target repo is not served here")
    target_branch = _branch(target.get("branch"), "target.branch")
    if not isinstance(source, dict):
        raise NotRunnable("a patch-only pull request (no source branch) is not run")
    source_branch = _branch(source.get("branch"), "source.branch")
    source_repo = source.get("repo")
    own = {value for value in (repo.repo_did, f"at://{repo.did}/{repos_service.REPO_COLLECTION}/{repo.rkey}")}
    if source_repo is not None and source_repo not in own:
        raise NotRunnable("a pull request from a fork is not run")
    if not repo.may_trigger(change.did, settings.owner):
        raise NotRunnable(f"{change.did} may not trigger {repo.did}/{repo.name}")
    sha = source.get("sha")
    if isinstance(sha, str) and COMMIT_RE.match(sha):
        sha = sha.lower()
    else:
        sha = await knot.branch_commit(
            knot=repo.knot, repo_did=repo.did, repo_name=repo.name, branch=source_branch
        )
    key = hashlib.sha256(f"{change.did}/{change.rkey}/{sha}".encode()).hexdigest()[:32]
    repo_meta: dict[str, Any] = {"knot": repo.knot, "did": repo.did, "repo": repo.name}
    if repo.repo_did:
        repo_meta["repoDid"] = repo.repo_did
    return PulledRequest(
        knot=repo.knot,
        rkey=f"pull-{key}",
        repo_did=repo.did,
        repo_name=repo.name,
        sha=sha,
        target_branch=target_branch,
        trigger={
            "kind": "pull_request",
            "repo": repo_meta,
            "pullRequest": {
                "sourceBranch": source_branch,
                "targetBranch": target_branch,
                "sourceSha": sha,
                "action": "opened" if change.operation == "create" else "synchronize",
                "pull": f"at://{change.did}/{PULL}/{change.rkey}",
            },
        },
    )
