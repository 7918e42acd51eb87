"""Pipelines: the manual trigger, and recording a pipeline with its workflow runs exactly once.

The trigger's warm path (the repo's registration read in the last second, the workflow files at
the commit cached) reads nothing from the database: the pipeline goes to the group-committing
PipelineWriter (writer.py), and a record key already taken comes back from it as a conflict.
Otherwise one query reads the registration and any pipeline under the record key first, so that a
retry is answered without contacting the knot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.knot.client import KnotClient
from app.repos import service as repos_service
from app.repos.models import Repo
from app.repos.service import RegistrationCache, Rights
from app.runs import schemas
from app.runs.models import Pipeline, Status
from app.runs.schemas import TriggerInput, WorkflowResult
from app.runs.status import payload, publish
from app.runs.writer import NewPipeline, PipelineWriter, PlannedRun, StoredPipeline
from app.streams.broker import EVENTS_TOPIC, Broker, status_topic
from app.workflows.inputs import resolve_inputs
from app.workflows.workflow import Workflow, WorkflowFile, parse_workflow
from app.xrpc.errors import Forbidden, InvalidRequest

if TYPE_CHECKING:
    from app.engine.queue import Scheduler

__all__ = ["PlannedRun", "announce_stored", "find_pipeline", "plan_runs", "trigger", "workflow_result"]

MAX_STEM_CHARS = 255
PLAN_CACHE_SIZE = 256


async def find_pipeline(*, session: AsyncSession, knot: str, rkey: str) -> Pipeline | None:
    """The pipeline (with its workflow runs) recorded for (knot, rkey), if any."""
    return await session.scalar(select(Pipeline).where(Pipeline.knot == knot, Pipeline.rkey == rkey))


def workflow_urls(
    *, settings: Settings, knot: str, rkey: str, workflows: Sequence[str]
) -> list[schemas.WorkflowUrls]:
    """The stream URLs of a pipeline's workflow runs, as the trigger answers them."""
    pipeline = f"{_quote(knot, safe=':')}/{_quote(rkey, safe='')}/"
    logs, status = f"{settings.ws_base_url}/logs/{pipeline}", f"{settings.base_url}/status/{pipeline}"
    urls: list[schemas.WorkflowUrls] = []
    for workflow in workflows:
        stem = _quote(workflow, safe="")
        urls.append({"workflow": workflow, "logsUrl": logs + stem, "statusUrl": status + stem})
    return urls


# What quote() leaves as it is, by `safe`: most knots, record keys and stems are only these.
_UNQUOTED = {"": re.compile(r"[A-Za-z0-9_.~-]*"), ":": re.compile(r"[A-Za-z0-9_.~:-]*")}


def _quote(value: str, *, safe: str) -> str:
    return value if _UNQUOTED[safe].fullmatch(value) else quote(value, safe=safe)


def workflow_result(*, settings: Settings, knot: str, rkey: str, workflow: str) -> WorkflowResult:
    """The stream URLs of one workflow run."""
    [urls] = workflow_urls(settings=settings, knot=knot, rkey=rkey, workflows=[workflow])
    return WorkflowResult(**urls)


def _output(*, settings: Settings, stored: StoredPipeline) -> schemas.TriggerOutput:
    return {
        "submitted": True,
        "knot": stored.knot,
        "pipelineRkey": stored.rkey,
        "ref": stored.sha,
        "workflows": workflow_urls(
            settings=settings, knot=stored.knot, rkey=stored.rkey, workflows=stored.workflows
        ),
    }


def _stored(pipeline: Pipeline) -> StoredPipeline:
    return StoredPipeline(
        created=False,
        knot=pipeline.knot,
        rkey=pipeline.rkey,
        sha=pipeline.sha,
        request_digest=pipeline.request_digest,
        workflows=tuple(run.name for run in pipeline.workflow_runs),
    )


def _replay(*, settings: Settings, stored: StoredPipeline, digest: str) -> schemas.TriggerOutput:
    """A retry of the same trigger gets the stored answer; a different one reusing the rkey, 400."""
    if stored.request_digest != digest:
        raise InvalidRequest(
            f"pipelineRkey {stored.rkey} was already used on knot {stored.knot} "
            "for a different trigger: use a new record key"
        )
    return _output(settings=settings, stored=stored)


def plan_runs(*, files: Sequence[WorkflowFile], inputs: dict[str, str]) -> list[PlannedRun]:
    """Parse the workflow files and resolve each one's inputs; 400 naming the file or input."""
    # Files at a commit never change: the plan of the same files and inputs is computed once.
    return list(_plan(tuple(files), tuple(inputs.items())))


@lru_cache(maxsize=PLAN_CACHE_SIZE)
def _plan(files: tuple[WorkflowFile, ...], items: tuple[tuple[str, str], ...]) -> tuple[PlannedRun, ...]:
    inputs = dict(items)
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
    return tuple(
        PlannedRun(name=w.stem, path=w.path, source=w.source, inputs=i)
        for w, i in zip(workflows, resolved, strict=True)
    )


async def _registration(
    *, sessionmaker: async_sessionmaker[AsyncSession], registrations: RegistrationCache, req: TriggerInput
) -> tuple[Repo | None, Pipeline | None]:
    """The registration of the request's repo, and the pipeline already under its rkey, if any."""
    async with sessionmaker() as session:
        # One round trip: the registration, and whether a pipeline has this record key.
        row = (
            await session.execute(
                select(Repo, Pipeline.id)
                .outerjoin(Pipeline, and_(Pipeline.knot == req.knot, Pipeline.rkey == req.pipeline_rkey))
                .where(Repo.knot == req.knot, Repo.did == req.repo_did, Repo.name == req.repo_name)
            )
        ).first()
        repo, existing = (row[0], row[1]) if row is not None else (None, None)
        if repo is not None:
            registrations.put(repo)
        else:
            registrations.forget(knot=req.knot, did=req.repo_did, name=req.repo_name)
        pipeline = None
        if existing is not None:
            pipeline = await find_pipeline(session=session, knot=req.knot, rkey=req.pipeline_rkey)
    return repo, pipeline


async def trigger(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    writer: PipelineWriter,
    registrations: RegistrationCache,
    knot: KnotClient,
    settings: Settings,
    broker: Broker,
    scheduler: Scheduler,
    actor: str,
    req: TriggerInput,
) -> schemas.TriggerOutput:
    """Authorize, read the workflows at the commit, record the pipeline once and wake the engine."""
    if actor != req.actor:
        raise Forbidden(f"the token was issued by {actor}, but the trigger's actor is {req.actor}")
    rights = registrations.get(knot=req.knot, did=req.repo_did, name=req.repo_name)
    files: Sequence[WorkflowFile] | None = knot.cached_workflow_files(
        knot=req.knot, repo_did=req.repo_did, repo_name=req.repo_name, sha=req.ref
    )
    digest = req.digest()
    existing: Pipeline | None = None
    registration: Rights | Repo | None = rights
    if rights is None or files is None:
        # Not warm: one read for the registration and a pipeline already under the rkey. (Warm,
        # nothing is read at all; a reused rkey shows up as a conflict when recording.)
        registration, existing = await _registration(
            sessionmaker=sessionmaker, registrations=registrations, req=req
        )
    repos_service.check_rights(
        registration,
        spindle_owner=settings.owner,
        actor=actor,
        knot=req.knot,
        did=req.repo_did,
        name=req.repo_name,
    )
    if existing is not None:
        return _replay(settings=settings, stored=_stored(existing), digest=digest)
    if files is None:
        files = await knot.workflow_files(
            knot=req.knot, repo_did=req.repo_did, repo_name=req.repo_name, sha=req.ref
        )
    try:
        runs = plan_runs(files=files, inputs=req.inputs)
    except InvalidRequest:
        # A reused record key is reported as such, whatever this request's inputs are worth.
        async with sessionmaker() as session:
            existing = await find_pipeline(session=session, knot=req.knot, rkey=req.pipeline_rkey)
        if existing is not None:
            return _replay(settings=settings, stored=_stored(existing), digest=digest)
        raise
    stored = await writer.record(
        NewPipeline(
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
    )
    if not stored.created:
        return _replay(settings=settings, stored=stored, digest=digest)
    announce_stored(broker=broker, stored=stored)
    scheduler.wake()
    return _output(settings=settings, stored=stored)


def announce_stored(*, broker: Broker, stored: StoredPipeline) -> None:
    """Tell this process's watchers about the committed `pending` events of a new pipeline."""
    assert stored.created_at is not None
    # Most triggers have nobody watching yet: no payload is built for nobody.
    if not broker.subscriber_count(EVENTS_TOPIC) and not any(
        broker.subscriber_count(status_topic(event.run_id)) for event in stored.events
    ):
        return
    for event in stored.events:
        publish(
            broker,
            event.run_id,
            payload(
                event_id=event.event_id,
                run_id=event.run_id,
                knot=stored.knot,
                rkey=stored.rkey,
                workflow=event.workflow,
                status=Status.PENDING,
                error=None,
                exit_code=None,
                created_at=stored.created_at,
            ),
        )
