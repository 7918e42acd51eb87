"""Pipelines: finding one, the answers the trigger gives, and the plan of a pipeline's runs.

Starting runs is app.runs.flows' business; this module is what those flows (and the streams)
ask about pipelines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from urllib.parse import quote

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.repos.models import Repo
from app.repos.service import RegistrationCache
from app.runs import schemas
from app.runs.models import Pipeline
from app.runs.schemas import TriggerInput, WorkflowResult
from app.runs.writer import PlannedRun, StoredPipeline
from app.workflows.inputs import resolve_inputs
from app.workflows.workflow import Workflow, WorkflowFile, parse_workflow
from app.xrpc.errors import InvalidRequest

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


def trigger_output(*, settings: Settings, stored: StoredPipeline) -> schemas.TriggerOutput:
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


def replay(*, settings: Settings, stored: Pipeline | StoredPipeline, digest: str) -> schemas.TriggerOutput:
    """A retry of the same trigger gets the stored answer; a different one reusing the rkey, 400."""
    if isinstance(stored, Pipeline):
        stored = _stored(stored)
    if stored.request_digest != digest:
        raise InvalidRequest(
            f"pipelineRkey {stored.rkey} was already used on knot {stored.knot} "
            "for a different trigger: use a new record key"
        )
    return trigger_output(settings=settings, stored=stored)


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


async def registration(
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
