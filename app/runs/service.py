"""Pipelines: the manual trigger, and recording a pipeline with its workflow runs exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.knot.client import KnotClient, WorkflowFile
from app.repos import service as repos_service
from app.repos.models import Repo
from app.runs.models import Pipeline, Status, StatusEvent, WorkflowRun
from app.runs.schemas import TriggerInput, TriggerOutput, WorkflowResult
from app.runs.status import announce, transition
from app.streams.broker import Broker
from app.workflows.inputs import resolve_inputs
from app.workflows.parser import Workflow, parse_workflow
from app.xrpc.errors import Forbidden, InvalidRequest

if TYPE_CHECKING:
    from app.engine.queue import Scheduler

MAX_STEM_CHARS = 255


@dataclass(frozen=True)
class PlannedRun:
    """A workflow run to record: the file's stem, path and source, and its resolved inputs."""

    name: str
    path: str
    source: str
    inputs: dict[str, str]


@dataclass
class Recorded:
    """A pipeline as stored; `created` is False when (knot, rkey) was already taken."""

    pipeline: Pipeline
    created: bool
    events: list[tuple[WorkflowRun, StatusEvent]] = field(default_factory=list)


async def find_pipeline(*, session: AsyncSession, knot: str, rkey: str) -> Pipeline | None:
    """The pipeline (with its workflow runs) recorded for (knot, rkey), if any."""
    return await session.scalar(select(Pipeline).where(Pipeline.knot == knot, Pipeline.rkey == rkey))


async def record_pipeline(
    *,
    session: AsyncSession,
    knot: str,
    rkey: str,
    repo_did: str,
    repo_name: str,
    sha: str,
    actor: str | None,
    trigger_kind: str,
    trigger: dict[str, Any],
    request_digest: str,
    runs: Sequence[PlannedRun],
) -> Recorded:
    """Commit a pipeline, its runs and their first `pending` events in one transaction, or find it."""
    pipeline = Pipeline(
        knot=knot,
        rkey=rkey,
        repo_did=repo_did,
        repo_name=repo_name,
        sha=sha,
        actor=actor,
        trigger_kind=trigger_kind,
        trigger=trigger,
        request_digest=request_digest,
    )
    workflow_runs = [
        WorkflowRun(pipeline=pipeline, name=run.name, path=run.path, source=run.source, inputs=run.inputs)
        for run in runs
    ]
    session.add(pipeline)
    try:
        await session.flush()  # the runs need their ids before their events
        events = [(run, transition(session, run, Status.PENDING)) for run in workflow_runs]
        await session.commit()
    except IntegrityError:
        # Another request recorded the same (knot, rkey) first: its row is the answer.
        await session.rollback()
        existing = await find_pipeline(session=session, knot=knot, rkey=rkey)
        if existing is None:
            raise
        return Recorded(existing, created=False)
    return Recorded(pipeline, created=True, events=events)


def announce_recorded(*, broker: Broker, recorded: Recorded) -> None:
    """Tell this process's watchers about the committed `pending` events of a new pipeline."""
    for run, event in recorded.events:
        announce(broker, run, event)


def workflow_result(*, settings: Settings, knot: str, rkey: str, workflow: str) -> WorkflowResult:
    """The stream URLs of one workflow run."""
    path = f"{quote(knot, safe=':')}/{quote(rkey, safe='')}/{quote(workflow, safe='')}"
    return WorkflowResult(
        workflow=workflow,
        logsUrl=f"{settings.ws_base_url}/logs/{path}",
        statusUrl=f"{settings.base_url}/status/{path}",
    )


def _output(*, settings: Settings, pipeline: Pipeline) -> TriggerOutput:
    return TriggerOutput(
        submitted=True,
        knot=pipeline.knot,
        pipelineRkey=pipeline.rkey,
        ref=pipeline.sha,
        workflows=[
            workflow_result(settings=settings, knot=pipeline.knot, rkey=pipeline.rkey, workflow=run.name)
            for run in pipeline.workflow_runs
        ],
    )


def _replay(*, settings: Settings, pipeline: Pipeline, digest: str) -> TriggerOutput:
    """A retry of the same trigger gets the stored answer; a different one reusing the rkey, 400."""
    if pipeline.request_digest != digest:
        raise InvalidRequest(
            f"pipelineRkey {pipeline.rkey} was already used on knot {pipeline.knot} "
            "for a different trigger: use a new record key"
        )
    return _output(settings=settings, pipeline=pipeline)


def plan_runs(*, files: Sequence[WorkflowFile], inputs: dict[str, str]) -> list[PlannedRun]:
    """Parse the workflow files and resolve each one's inputs; 400 naming the file or input."""
    workflows: list[Workflow] = [parse_workflow(f.path, f.source) for f in files]
    by_stem: dict[str, str] = {}
    for workflow in workflows:
        stem = workflow.stem
        if stem in ("", ".", "..") or len(stem) > MAX_STEM_CHARS or any(ord(c) < 32 for c in stem):
            raise InvalidRequest(f"workflow {workflow.path}: its file name does not give a usable name")
        if stem in by_stem:
            raise InvalidRequest(
                f"workflows {by_stem[stem]} and {workflow.path} have the same name {stem!r}: rename one"
            )
        by_stem[stem] = workflow.path
    resolved = resolve_inputs(workflows=workflows, inputs=inputs)
    return [
        PlannedRun(name=w.stem, path=w.path, source=w.source, inputs=i)
        for w, i in zip(workflows, resolved, strict=True)
    ]


async def trigger(
    *,
    session: AsyncSession,
    knot: KnotClient,
    settings: Settings,
    broker: Broker,
    scheduler: Scheduler,
    actor: str,
    req: TriggerInput,
) -> TriggerOutput:
    """Authorize, read the workflows at the commit, record the pipeline once and wake the engine."""
    if actor != req.actor:
        raise Forbidden(f"the token was issued by {actor}, but the trigger's actor is {req.actor}")
    # One round trip: the registration, and a pipeline already recorded under this record key.
    row = (
        await session.execute(
            select(Repo, Pipeline.id)
            .outerjoin(Pipeline, and_(Pipeline.knot == req.knot, Pipeline.rkey == req.pipeline_rkey))
            .where(Repo.knot == req.knot, Repo.did == req.repo_did, Repo.name == req.repo_name)
        )
    ).first()
    repos_service.check_rights(
        row[0] if row else None,
        spindle_owner=settings.owner,
        actor=actor,
        knot=req.knot,
        did=req.repo_did,
        name=req.repo_name,
    )
    digest = req.digest()
    if row is not None and row[1] is not None:
        existing = await find_pipeline(session=session, knot=req.knot, rkey=req.pipeline_rkey)
        if existing is not None:
            return _replay(settings=settings, pipeline=existing, digest=digest)
    where = {"knot": req.knot, "repo_did": req.repo_did, "repo_name": req.repo_name, "sha": req.ref}
    files = knot.cached_workflow_files(**where)
    if files is None:
        # End the read transaction: no connection (or snapshot) is held while the knot answers.
        await session.commit()
        files = await knot.workflow_files(**where)
    runs = plan_runs(files=files, inputs=req.inputs)
    recorded = await record_pipeline(
        session=session,
        knot=req.knot,
        rkey=req.pipeline_rkey,
        repo_did=req.repo_did,
        repo_name=req.repo_name,
        sha=req.ref,
        actor=actor,
        trigger_kind="manual",
        trigger={"inputs": req.inputs},
        request_digest=digest,
        runs=runs,
    )
    if not recorded.created:
        return _replay(settings=settings, pipeline=recorded.pipeline, digest=digest)
    announce_recorded(broker=broker, recorded=recorded)
    scheduler.wake()
    return _output(settings=settings, pipeline=recorded.pipeline)
