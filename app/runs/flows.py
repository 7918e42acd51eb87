"""Every way a pipeline's runs start, and the one tail they share: RunFlows.

    trigger()         the manual XRPC trigger (com.publicdomainrelay.temp.tangled.spindle.trigger)
    knot_pipeline()   a knot's `sh.tangled.pipeline` event (app.knot.events reads the stream)
    knot_push()       a knot's `sh.tangled.git.refUpdate` (current knots): the workflows at the
                      pushed commit whose `on: push` filters match, as GitHub matches them
    pull_request()    a `sh.tangled.repo.pull` record (app.jetstream.pulls): the workflows at the
                      source commit whose `on: pull_request` filters match the target branch

RunStarter.start checks the quotas (app.runs.quota) of every one of them before recording.

Each flow checks what its way of starting requires, plans the runs (service.plan_runs) and hands
the pipeline to RunStarter.start: recorded exactly once (writer.py), its `pending` runs announced
after the commit, the engine woken. A pipeline that was already recorded starts nothing again.

Knot events: a `sh.tangled.pipeline` event names Tangled workflows (`ci.yml` from
`.tangled/workflows/`); each one runs as the GitHub Actions file with the same stem in
`.github/workflows/` at the event's commit, and names without such a file are skipped (and
logged). The pipeline's key is the event's rkey on that knot, so a redelivered event finds its
pipeline and does nothing, without asking the knot again. A manual event carries no commit: it
runs at the head of the repo's default branch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.knot.client import KnotClient
from app.repos import service as repos_service
from app.repos.models import Repo
from app.repos.service import RegistrationCache, Rights
from app.runs import schemas, service
from app.runs.models import Pipeline
from app.runs.quota import RunQuota
from app.runs.schemas import TriggerInput
from app.runs.status import announce_pipeline
from app.runs.writer import NewPipeline, PipelineWriter, PlannedRun, StoredPipeline
from app.streams.broker import Broker
from app.workflows.triggers import Triggers
from app.workflows.workflow import WORKFLOW_SUFFIXES, WorkflowFile, parse_workflow, workflow_stem
from app.xrpc.errors import Forbidden, InvalidRequest, RateLimitExceeded

if TYPE_CHECKING:
    from app.engine.queue import Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchedPipeline:
    """What a knot's pipeline event asks for, already checked against the registry."""

    knot: str
    rkey: str
    repo_did: str
    repo_name: str
    kind: str  # push | pull_request | manual
    sha: str | None  # None for a manual event: the default branch's head, asked of the knot
    default_branch: str | None
    names: tuple[str, ...]  # the workflow names as the event gave them
    other_dids: tuple[str, ...] = ()  # the repo's own DID, when the event names it besides the owner's
    inputs: dict[str, str] = field(default_factory=dict)
    trigger: dict[str, Any] = field(default_factory=dict)  # triggerMetadata, for the github context


@dataclass(frozen=True)
class PushedRef:
    """A knot's `sh.tangled.git.refUpdate`, already matched to a served repo."""

    knot: str
    rkey: str  # the event's record key: the pipeline's key on that knot
    repo_did: str  # the registration's DID and name
    repo_name: str
    ref: str
    old_sha: str
    new_sha: str
    # The files the push changed, when the knot says (2026 knots send `changedFiles`); None:
    # unknown, and `paths` / `paths-ignore` filters then let the push through.
    changed_paths: tuple[str, ...] | None
    trigger: dict[str, Any] = field(default_factory=dict)  # triggerMetadata, for the github context


@dataclass(frozen=True)
class PulledRequest:
    """A pull request of a served repo (a `sh.tangled.repo.pull` record on Jetstream)."""

    knot: str
    rkey: str  # the pipeline's key on that knot: one per (pull record, source commit)
    repo_did: str
    repo_name: str
    sha: str  # the source branch's commit
    target_branch: str
    trigger: dict[str, Any] = field(default_factory=dict)  # triggerMetadata, kind "pull_request"


@dataclass
class Dispatched:
    """The outcome: `created` only for a newly recorded pipeline; `skipped` names had no file."""

    created: bool
    pipeline: Pipeline | StoredPipeline | None
    runs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class RepoOnKnot(Protocol):
    """Where a pipeline's repo lives: a trigger's request and a knot's event both say it."""

    @property
    def knot(self) -> str: ...
    @property
    def repo_did(self) -> str: ...
    @property
    def repo_name(self) -> str: ...


@dataclass(frozen=True)
class RunStarter:
    """The tail of every flow: record a new pipeline once, announce its pending runs after the
    commit, wake the engine."""

    writer: PipelineWriter
    broker: Broker
    scheduler: Scheduler
    quota: RunQuota | None = None

    async def start(
        self,
        repo: RepoOnKnot,
        *,
        rkey: str,
        sha: str,
        actor: str | None,
        kind: str,
        trigger: dict[str, Any],
        digest: str,
        runs: Sequence[PlannedRun],
        tid: str | None = None,
    ) -> StoredPipeline:
        """The stored pipeline; `created` is False when (knot, rkey) was already recorded, and
        then nothing is announced or started. `tid` is its CI API id (default: a new TID).
        RateLimitExceeded (app.runs.quota) when the actor or the repo is over its limits: nothing
        is recorded."""
        if self.quota is not None:
            try:
                await self.quota.admit(
                    knot=repo.knot,
                    repo_did=repo.repo_did,
                    repo_name=repo.repo_name,
                    actor=actor,
                    runs=len(runs),
                )
            except RateLimitExceeded:
                # A retry of a pipeline already recorded gets its answer, whatever the limits say now.
                async with self.quota.sessionmaker() as session:
                    if await service.find_pipeline(session=session, knot=repo.knot, rkey=rkey) is None:
                        raise
        stored = await self.writer.record(
            NewPipeline(
                knot=repo.knot,
                rkey=rkey,
                repo_did=repo.repo_did,
                repo_name=repo.repo_name,
                sha=sha,
                actor=actor,
                trigger_kind=kind,
                trigger=trigger,
                request_digest=digest,
                runs=runs,
                tid=tid,
            )
        )
        if stored.created:
            announce_pipeline(self.broker, stored)
            self.scheduler.wake()
        return stored


@dataclass(frozen=True)
class RunFlows:
    """The flows, with what they read (the database, the knots, registrations) and their tail."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    knot: KnotClient
    registrations: RegistrationCache
    starter: RunStarter

    async def trigger(self, *, actor: str, req: TriggerInput) -> schemas.TriggerOutput:
        """Authorize, read the workflows at the commit, plan their runs and start them once.

        The warm path (the repo's registration read in the last second, the workflow files at the
        commit cached) reads nothing from the database: a record key already taken comes back from the
        writer as a conflict. Otherwise one query reads the registration and any pipeline under the
        record key first, so that a retry is answered without contacting the knot.
        """
        if actor != req.actor:
            raise Forbidden(f"the token was issued by {actor}, but the trigger's actor is {req.actor}")
        rights = self.registrations.get(knot=req.knot, did=req.repo_did, name=req.repo_name)
        files: Sequence[WorkflowFile] | None = self.knot.cached_workflow_files(
            knot=req.knot, repo_did=req.repo_did, repo_name=req.repo_name, sha=req.ref
        )
        digest = req.digest()
        existing: Pipeline | None = None
        registration: Rights | Repo | None = rights
        if rights is None or files is None:
            # Not warm: one read for the registration and a pipeline already under the rkey. (Warm,
            # nothing is read at all; a reused rkey shows up as a conflict when recording.)
            registration, existing = await service.registration(
                sessionmaker=self.sessionmaker, registrations=self.registrations, req=req
            )
        repos_service.check_rights(
            registration,
            spindle_owner=self.settings.owner,
            actor=actor,
            knot=req.knot,
            did=req.repo_did,
            name=req.repo_name,
        )
        if existing is not None:
            return service.replay(settings=self.settings, stored=existing, digest=digest)
        if files is None:
            files = await self.knot.workflow_files(
                knot=req.knot, repo_did=req.repo_did, repo_name=req.repo_name, sha=req.ref
            )
        try:
            runs = service.plan_runs(files=files, inputs=req.inputs)
        except InvalidRequest:
            # A reused record key is reported as such, whatever this request's inputs are worth.
            async with self.sessionmaker() as session:
                existing = await service.find_pipeline(session=session, knot=req.knot, rkey=req.pipeline_rkey)
            if existing is not None:
                return service.replay(settings=self.settings, stored=existing, digest=digest)
            raise
        stored = await self.starter.start(
            req,
            rkey=req.pipeline_rkey,
            sha=req.ref,
            actor=actor,
            kind="manual",
            trigger={"inputs": req.inputs},
            digest=digest,
            runs=runs,
        )
        if not stored.created:
            return service.replay(settings=self.settings, stored=stored, digest=digest)
        return service.trigger_output(settings=self.settings, stored=stored)

    async def knot_pipeline(self, dispatch: DispatchedPipeline) -> Dispatched:
        """Start the runs of a knot's pipeline event, once: a redelivery finds its pipeline."""
        # The read transaction ends here: no connection (or SQLite snapshot) is held while the knot answers.
        async with self.sessionmaker() as session:
            existing = await service.find_pipeline(session=session, knot=dispatch.knot, rkey=dispatch.rkey)
        if existing is not None:
            if not _same_pipeline(existing, dispatch):
                log.warning(
                    "knot %s: rkey %s already names another pipeline (%s/%s at %s); event ignored",
                    dispatch.knot,
                    dispatch.rkey,
                    existing.repo_did,
                    existing.repo_name,
                    existing.sha,
                )
            return Dispatched(created=False, pipeline=existing)
        sha = dispatch.sha
        trigger = dict(dispatch.trigger)
        if sha is None:
            if not dispatch.default_branch:
                raise InvalidRequest("a manual event without a commit must name the repo's default branch")
            sha = await self.knot.branch_commit(
                knot=dispatch.knot,
                repo_did=dispatch.repo_did,
                repo_name=dispatch.repo_name,
                branch=dispatch.default_branch,
            )
            trigger["ref"] = f"refs/heads/{dispatch.default_branch}"
        wanted = {stem for stem in map(tangled_stem, dispatch.names) if stem is not None}
        files = await self.knot.workflow_files(
            knot=dispatch.knot,
            repo_did=dispatch.repo_did,
            repo_name=dispatch.repo_name,
            sha=sha,
            stems=wanted,
        )
        chosen, skipped = _select(dispatch, files, sha)
        runs: list[PlannedRun] = []
        for file in chosen:
            try:
                runs.extend(service.plan_runs(files=[file], inputs=dispatch.inputs))
            except InvalidRequest as exc:
                # One unreadable workflow does not stop the others, as on GitHub.
                skipped.append(file.filename)
                log.warning(
                    "knot %s pipeline %s: skipped %s: %s",
                    dispatch.knot,
                    dispatch.rkey,
                    file.path,
                    exc.message,
                )
        if not runs:
            log.warning(
                "knot %s pipeline %s for %s/%s at %s: no workflow to run, nothing recorded",
                dispatch.knot,
                dispatch.rkey,
                dispatch.repo_did,
                dispatch.repo_name,
                sha,
            )
            return Dispatched(created=False, pipeline=None, skipped=skipped)
        recorded = await self.starter.start(
            dispatch,
            rkey=dispatch.rkey,
            sha=sha,
            actor=None,
            kind=dispatch.kind,
            trigger=trigger,
            digest=_digest(dispatch, sha),
            runs=runs,
        )
        if recorded.created:
            log.info(
                "knot %s pipeline %s: %s event for %s/%s at %s runs %s",
                dispatch.knot,
                dispatch.rkey,
                dispatch.kind,
                dispatch.repo_did,
                dispatch.repo_name,
                sha,
                ", ".join(run.name for run in runs),
            )
        return Dispatched(
            created=recorded.created,
            pipeline=recorded,
            runs=[run.name for run in runs],
            skipped=skipped,
        )

    async def knot_push(self, push: PushedRef) -> Dispatched:
        """Start the workflows whose `on: push` matches a pushed ref, once per event."""
        return await self._matching(
            push,
            sha=push.new_sha,
            kind="push",
            what=f"push of {push.ref}",
            matches=lambda on: on.matches_push(ref=push.ref, changed_paths=push.changed_paths),
        )

    async def pull_request(self, pull: PulledRequest) -> Dispatched:
        """Start the workflows whose `on: pull_request` matches a pull request's target branch."""
        return await self._matching(
            pull,
            sha=pull.sha,
            kind="pull_request",
            what=f"pull request into {pull.target_branch}",
            matches=lambda on: on.matches_pull_request(base_ref=pull.target_branch),
        )

    async def _matching(
        self,
        event: PushedRef | PulledRequest,
        *,
        sha: str,
        kind: str,
        what: str,
        matches: Callable[[Triggers], bool],
    ) -> Dispatched:
        """Read the workflows at `sha`, start those `matches` accepts, once per (knot, rkey)."""
        async with self.sessionmaker() as session:
            existing = await service.find_pipeline(session=session, knot=event.knot, rkey=event.rkey)
        if existing is not None:
            return Dispatched(created=False, pipeline=existing)
        where = f"knot {event.knot} {event.rkey}: {what} of {event.repo_did}/{event.repo_name} at {sha}"
        try:
            files = await self.knot.workflow_files(
                knot=event.knot, repo_did=event.repo_did, repo_name=event.repo_name, sha=sha
            )
        except InvalidRequest as exc:
            log.info("%s: nothing to run: %s", where, exc.message)
            return Dispatched(created=False, pipeline=None)
        runs: list[PlannedRun] = []
        skipped: list[str] = []
        for file in files:
            try:
                if not matches(parse_workflow(file.path, file.source).on):
                    skipped.append(file.filename)
                    continue
                runs.extend(service.plan_runs(files=[file], inputs={}))
            except InvalidRequest as exc:
                # One unreadable workflow does not stop the others, as on GitHub.
                skipped.append(file.filename)
                log.warning("%s: skipped %s: %s", where, file.path, exc.message)
        if not runs:
            log.info("%s: no workflow's `on:` matches", where)
            return Dispatched(created=False, pipeline=None, skipped=skipped)
        canonical = json.dumps(
            [kind, event.knot, event.rkey, event.repo_did, event.repo_name, sha, event.trigger]
        )
        recorded = await self.starter.start(
            event,
            rkey=event.rkey,
            sha=sha,
            actor=None,
            kind=kind,
            trigger=event.trigger,
            digest=hashlib.sha256(canonical.encode()).hexdigest(),
            runs=runs,
        )
        if recorded.created:
            log.info("%s runs %s", where, ", ".join(run.name for run in runs))
        return Dispatched(
            created=recorded.created, pipeline=recorded, runs=[run.name for run in runs], skipped=skipped
        )


# -- knot events: which files a Tangled pipeline names --------------------------------------------


def tangled_stem(name: str) -> str | None:
    """`.tangled/workflows/ci.yml`, `ci.yml` or `ci` → `ci`; None for a name that gives no stem."""
    base = name.rsplit("/", 1)[-1]
    stem = workflow_stem(base) if base.endswith(WORKFLOW_SUFFIXES) else base
    if stem in ("", ".", "..") or len(stem) > service.MAX_STEM_CHARS:
        return None
    if any(ord(c) < 32 or c == "\\" for c in stem):
        return None
    return stem


def _digest(dispatch: DispatchedPipeline, sha: str) -> str:
    canonical = json.dumps(
        ["knot-event", dispatch.knot, dispatch.rkey, dispatch.repo_did, dispatch.repo_name, sha]
        + [dispatch.kind, list(dispatch.names), dispatch.inputs],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_pipeline(pipeline: Pipeline, dispatch: DispatchedPipeline) -> bool:
    same_repo = (pipeline.repo_did, pipeline.repo_name) == (dispatch.repo_did, dispatch.repo_name)
    same_commit = dispatch.sha is None or pipeline.sha == dispatch.sha
    return same_repo and same_commit and pipeline.trigger_kind == dispatch.kind


def _select(
    dispatch: DispatchedPipeline, files: list[WorkflowFile], sha: str
) -> tuple[list[WorkflowFile], list[str]]:
    """The GitHub file for each distinct stem the event names, and the names left without one."""
    by_stem: dict[str, list[WorkflowFile]] = {}
    for file in files:
        by_stem.setdefault(file.stem, []).append(file)
    chosen: list[WorkflowFile] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for name in dispatch.names:
        stem = tangled_stem(name)
        if stem is None:
            skipped.append(name)
            log.warning(
                "knot %s pipeline %s: workflow name %r gives no file name", dispatch.knot, dispatch.rkey, name
            )
            continue
        if stem in seen:
            continue
        seen.add(stem)
        matches = by_stem.get(stem, [])
        if len(matches) == 1:
            chosen.append(matches[0])
            continue
        skipped.append(name)
        if matches:
            log.warning(
                "knot %s pipeline %s: skipped workflow %s: both %s exist, so which one runs is unclear",
                dispatch.knot,
                dispatch.rkey,
                name,
                " and ".join(f.path for f in matches),
            )
        else:
            log.warning(
                "knot %s pipeline %s: skipped workflow %s: no .github/workflows/%s.yml or .yaml at %s",
                dispatch.knot,
                dispatch.rkey,
                name,
                stem,
                sha,
            )
    return chosen, skipped
