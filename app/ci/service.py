"""Tangled's CI API on our runs: pipelines as `sh.tangled.ci.pipeline`, and what the methods do.

Every pipeline, however it started (our trigger: `manual`; a knot's `sh.tangled.pipeline`:
its kind; a push: `push`; triggerPipeline: `manual` or `pull_request`), is read generically from
the pipeline table: its id is `pipeline.tid`, its trigger is built from `trigger_kind` and the
stored trigger metadata (Tangled's triggerMetadata shape, or our trigger's `{"inputs": {...}}`).

Rights, as Tangled's spindle checks them: the queries and the log subscription are public, as our
status and log URLs are; cancelPipeline and triggerPipeline need the repo's owner, a collaborator
or the spindle owner (our trigger's rights), named by a service-auth token for that method.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.ci import schemas
from app.ci.schemas import CancelInput, DescribeInput, QueryInput, TriggerInput
from app.config import Settings
from app.knot.client import KnotClient
from app.repos import service as repos_service
from app.repos.models import Repo
from app.runs import service as runs_service
from app.runs.flows import RunStarter, tangled_stem
from app.runs.models import Pipeline, Status, WorkflowRun, pipeline_uri
from app.runs.tid import new_tid
from app.streams.service import format_datetime
from app.workflows.workflow import WorkflowFile
from app.xrpc.errors import Forbidden, InvalidRequest

if TYPE_CHECKING:
    from app.engine.queue import Scheduler

ZERO_SHA = "0" * 40
_DID_PREFIX = "did:"


# -- views -----------------------------------------------------------------------------------


def _section(trigger: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = trigger.get(key)
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _pairs(inputs: Any) -> list[dict[str, str]]:
    """Inputs as `sh.tangled.ci.trigger#pair`s: from Tangled's pair list or our trigger's object."""
    if isinstance(inputs, Mapping):
        return [{"key": str(k), "value": str(v)} for k, v in inputs.items()]
    if isinstance(inputs, list):
        return [
            {"key": p["key"], "value": p["value"]}
            for p in inputs
            if isinstance(p, Mapping) and isinstance(p.get("key"), str) and isinstance(p.get("value"), str)
        ]
    return []


def trigger_view(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline's trigger as the `sh.tangled.ci.trigger` union member of its kind."""
    trigger: Mapping[str, Any] = pipeline.trigger if isinstance(pipeline.trigger, Mapping) else {}
    source_repo = _text(trigger.get("sourceRepo"))
    if pipeline.trigger_kind == "push":
        push = _section(trigger, "push")
        return {
            "$type": schemas.PUSH,
            "ref": _text(push.get("ref")) or _text(trigger.get("ref")) or "",
            "newSha": _text(push.get("newSha")) or pipeline.sha,
            # A push that created the ref has no old commit: git's all-zero id, as knots send it.
            "oldSha": _text(push.get("oldSha")) or ZERO_SHA,
        }
    if pipeline.trigger_kind == "pull_request":
        pr = _section(trigger, "pullRequest")
        view: dict[str, Any] = {
            "$type": schemas.PULL_REQUEST,
            "targetBranch": _text(pr.get("targetBranch")) or "",
            "sourceSha": _text(pr.get("sourceSha")) or pipeline.sha,
        }
        if _text(pr.get("sourceBranch")):
            view["sourceBranch"] = pr["sourceBranch"]
        if pr.get("action") in schemas.PR_ACTIONS:
            view["action"] = pr["action"]
        if isinstance(pr.get("pull"), str) and pr["pull"].startswith("at://"):
            view["pull"] = pr["pull"]
        if source_repo and source_repo.startswith(_DID_PREFIX):
            view["sourceRepo"] = source_repo
        return view
    manual = _section(trigger, "manual")
    view = {"$type": schemas.MANUAL, "sha": _text(manual.get("sha")) or pipeline.sha}
    ref = _text(manual.get("ref")) or _text(trigger.get("ref"))
    if ref:
        view["ref"] = ref
    inputs = _pairs(manual["inputs"] if "inputs" in manual else trigger.get("inputs"))
    if inputs:
        view["inputs"] = inputs
    if source_repo and source_repo.startswith(_DID_PREFIX):
        view["sourceRepo"] = source_repo
    return view


def workflow_view(run: WorkflowRun) -> dict[str, Any]:
    """A workflow run as `sh.tangled.ci.pipeline#workflow`: its name is its id."""
    view: dict[str, Any] = {"id": run.name, "name": run.name, "status": Status(run.status).value}
    for key, moment in (("startedAt", run.started_at), ("finishedAt", run.finished_at)):
        if moment is not None:
            view[key] = format_datetime(moment)
    if run.error is not None:
        view["error"] = run.error
    return view


def pipeline_view(pipeline: Pipeline) -> dict[str, Any]:
    """A pipeline as `sh.tangled.ci.pipeline`."""
    return {
        "id": pipeline.tid,
        "repo": pipeline.repo_did,
        "trigger": trigger_view(pipeline),
        "commit": pipeline.sha,
        "createdAt": format_datetime(pipeline.created_at),
        "workflows": [workflow_view(run) for run in pipeline.workflow_runs],
    }


# -- lookups ---------------------------------------------------------------------------------


def _with_runs(query: Any) -> Any:
    # The runs without their workflow sources (up to 64 KiB each): views never show them.
    return query.options(selectinload(Pipeline.workflow_runs).defer(WorkflowRun.source))


async def find_pipeline(*, session: AsyncSession, tid: str) -> Pipeline | None:
    """The pipeline whose CI API id is `tid`, with its runs."""
    return await session.scalar(_with_runs(select(Pipeline).where(Pipeline.tid == tid)))


async def served_repos(*, session: AsyncSession, did: str) -> list[Repo]:
    """Every registration of the repo DID `did` (several only for 2025 repos named by their owner's DID)."""
    return list(await session.scalars(select(Repo).where(Repo.did == did).order_by(Repo.id)))


async def served_repo(*, session: AsyncSession, did: str) -> Repo:
    """The one repo this spindle serves under `did`; 403 when none, 400 when the DID names several."""
    repos = await served_repos(session=session, did=did)
    if not repos:
        raise Forbidden(f"the repo {did} is not served by this spindle")
    if len(repos) > 1:
        # A 2025 repo is named by its owner's DID and its name; Tangled's CI API has only the DID.
        names = ", ".join(sorted(r.name for r in repos)[:5])
        raise InvalidRequest(
            f"repo {did} names {len(repos)} repos served here ({names}): "
            "name the repo by its own DID, or use sh.tangled.pipeline.cancelPipeline / our trigger"
        )
    return repos[0]


# -- queries ---------------------------------------------------------------------------------


async def query_pipelines(*, session: AsyncSession, q: QueryInput) -> dict[str, Any]:
    """A page of the repo's pipelines, newest first, with the total that match and the next cursor."""
    conditions = [Pipeline.repo_did == q.repo, Pipeline.tid.is_not(None)]
    if q.kinds:
        conditions.append(Pipeline.trigger_kind.in_(q.kinds))
    if q.commits:
        conditions.append(Pipeline.sha.in_(q.commits))
        # "At most one pipeline per commit": the newest of each.
        newest = select(func.max(Pipeline.id)).where(*conditions).group_by(Pipeline.sha).correlate(None)
        conditions.append(Pipeline.id.in_(newest))
    total = await session.scalar(select(func.count()).select_from(Pipeline).where(*conditions))
    page = select(Pipeline).where(*conditions)
    if q.before is not None:
        page = page.where(Pipeline.id < q.before)
    rows = list(await session.scalars(_with_runs(page.order_by(Pipeline.id.desc()).limit(q.limit + 1))))
    out: dict[str, Any] = {"total": int(total or 0), "pipelines": [pipeline_view(p) for p in rows[: q.limit]]}
    if len(rows) > q.limit:
        out["cursor"] = str(rows[q.limit - 1].id)
    return out


async def get_pipeline(*, session: AsyncSession, tid: str) -> dict[str, Any]:
    """The pipeline `tid` as `sh.tangled.ci.pipeline`; PipelineNotFound otherwise."""
    pipeline = await find_pipeline(session=session, tid=tid)
    if pipeline is None:
        raise schemas.PipelineNotFound(f"no pipeline {tid} on this spindle")
    return pipeline_view(pipeline)


def select_runs(pipeline: Pipeline, names: Sequence[str]) -> list[WorkflowRun]:
    """The pipeline's runs named (by stem, or file name as Tangled names workflows), or all of them."""
    if not names:
        return list(pipeline.workflow_runs)
    by_name = {run.name: run for run in pipeline.workflow_runs}
    chosen: dict[int, WorkflowRun] = {}
    for name in names:
        run = by_name.get(name) or by_name.get(tangled_stem(name) or "")
        if run is None:
            raise schemas.WorkflowNotFound(f"pipeline {pipeline.tid} has no workflow {name!r}")
        chosen[run.id] = run
    return list(chosen.values())


# -- procedures ------------------------------------------------------------------------------


async def _authorize(*, session: AsyncSession, settings: Settings, actor: str, did: str) -> list[Repo]:
    """The registrations of `did` that `actor` may trigger; 403 when there is none."""
    repos = await served_repos(session=session, did=did)
    if not repos:
        raise Forbidden(f"the repo {did} is not served by this spindle")
    allowed = [r for r in repos if r.may_trigger(actor, settings.owner)]
    if not allowed:
        raise Forbidden(f"{actor} is neither the owner nor a collaborator of {did}")
    return allowed


async def cancel_pipeline(
    *, session: AsyncSession, settings: Settings, scheduler: Scheduler, actor: str, req: CancelInput
) -> None:
    """Cancel the pipeline's named workflows (all when none are named) that have not finished."""
    allowed = await _authorize(session=session, settings=settings, actor=actor, did=req.repo)
    pipeline = await find_pipeline(session=session, tid=req.pipeline)
    # A pipeline of another repo is "not found": rights on one repo reveal nothing of others.
    if pipeline is None or pipeline.repo_did != req.repo:
        raise schemas.PipelineNotFound(f"{req.repo} has no pipeline {req.pipeline}")
    if not any((r.knot, r.name) == (pipeline.knot, pipeline.repo_name) for r in allowed):
        raise Forbidden(f"{actor} is neither the owner nor a collaborator of {req.repo}/{pipeline.repo_name}")
    runs = select_runs(pipeline, req.workflows)
    await session.commit()  # nothing is held open while the engine stops the runs
    for run in runs:
        if not Status(run.status).is_finished:
            await scheduler.cancel(run.id)


@dataclass(frozen=True)
class RepoOnKnot:
    knot: str
    repo_did: str
    repo_name: str


def _trigger_metadata(repo: Repo, req: TriggerInput) -> dict[str, Any]:
    """What the run's github context and TANGLED_* variables read: Tangled's triggerMetadata."""
    meta: dict[str, Any] = {
        "kind": req.kind,
        "repo": {
            "knot": repo.knot,
            "did": repo.owner_did,
            "repoDid": repo.did,
            "repo": repo.rkey or repo.name,
        },
    }
    if req.kind == "pull_request":
        pr: dict[str, Any] = {"targetBranch": req.target_branch, "sourceSha": req.sha}
        pr.update(
            {
                k: v
                for k, v in (("sourceBranch", req.source_branch), ("action", req.action), ("pull", req.pull))
                if v
            }
        )
        meta["pullRequest"] = pr
        return meta
    manual: dict[str, Any] = {
        "sha": req.sha,
        "inputs": [{"key": k, "value": v} for k, v in req.inputs.items()],
    }
    if req.ref:
        manual["ref"] = req.ref
        # RunSpec.ref reads a manual trigger's ref here (as our own trigger stores it).
        meta["ref"] = req.ref if req.ref.startswith("refs/") else f"refs/heads/{req.ref}"
    meta["manual"] = manual
    return meta


def _chosen(files: Sequence[WorkflowFile], names: Sequence[str], sha: str) -> list[WorkflowFile]:
    if not names:
        return list(files)
    by_stem = {f.stem: f for f in files}
    chosen: dict[str, WorkflowFile] = {}
    for index, name in enumerate(names):
        stem = tangled_stem(name)
        if stem is None or stem not in by_stem:
            raise InvalidRequest(f"workflows[{index}]: there is no workflow {name!r} at commit {sha}")
        chosen[stem] = by_stem[stem]
    return list(chosen.values())


async def trigger_pipeline(
    *,
    session: AsyncSession,
    settings: Settings,
    knot: KnotClient,
    starter: RunStarter,
    actor: str,
    req: TriggerInput,
) -> dict[str, str]:
    """Run the repo's workflows (the named ones, or all) at the commit; the new pipeline's at-uri.

    Recorded (with a new TID as both its id and record key) before the answer, as our trigger is.
    """
    repo = await served_repo(session=session, did=req.repo)
    repos_service.check_rights(
        repo, spindle_owner=settings.owner, actor=actor, knot=repo.knot, did=repo.did, name=repo.name
    )
    await session.commit()  # no transaction is held while the knot answers
    if req.source_repo is not None and req.source_repo != req.repo:
        raise InvalidRequest(
            "trigger.sourceRepo: runs of code from another repo (a fork) are not supported here"
        )
    files = await knot.workflow_files(knot=repo.knot, repo_did=repo.did, repo_name=repo.name, sha=req.sha)
    runs = runs_service.plan_runs(files=_chosen(files, req.workflows, req.sha), inputs=req.inputs)
    tid = new_tid()
    trigger = _trigger_metadata(repo, req)
    digest = hashlib.sha256(
        json.dumps(
            ["ci.triggerPipeline", actor, tid, trigger], sort_keys=True, separators=(",", ":")
        ).encode()
    ).hexdigest()
    await starter.start(
        RepoOnKnot(repo.knot, repo.did, repo.name),
        rkey=tid,
        sha=req.sha,
        actor=actor,
        kind=req.kind,
        trigger=trigger,
        digest=digest,
        runs=runs,
        tid=tid,
    )
    return {"pipeline": pipeline_uri(repo.knot, tid)}


def fingerprint(files: Sequence[WorkflowFile]) -> str:
    """`sha256:<hex>` over the files sorted by name, each as name, NUL, 8-byte length, content.

    The same framing as Tangled's spindle (the NUL and the length keep ["fo","o"] apart from
    ["f","oo"]); only equality of fingerprints means anything.
    """
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.filename):
        content = file.source.encode("utf-8", errors="surrogateescape")
        digest.update(file.filename.encode() + b"\0" + struct.pack("<Q", len(content)) + content)
    return "sha256:" + digest.hexdigest()


async def describe(*, session: AsyncSession, knot: KnotClient, req: DescribeInput) -> dict[str, Any]:
    """The workflow files the repo's pipeline would run at the commit, and their fingerprint."""
    repo = await served_repo(session=session, did=req.repo)
    await session.commit()
    if req.source_repo is not None and req.source_repo != req.repo:
        raise InvalidRequest("sourceRepo: workflow definitions of another repo (a fork) are not read here")
    files = await knot.workflow_files(
        knot=repo.knot, repo_did=repo.did, repo_name=repo.name, sha=req.sha, allow_none=True
    )
    return {"derived": True, "hash": fingerprint(files), "workflows": [f.path for f in files]}
