"""The `sh.tangled.ci.*` inputs, checked against their lexicons and the rules of docs/tangled-ci.md.

Queries read their parameters with the lexicon's params parser; procedures validate their JSON
body against the lexicon, then what the lexicon cannot say (hex commits, one trigger kind, input
names). Every failure is a 400 `InvalidRequest` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.runs.schemas import COMMIT_RE, MAX_INPUTS, MAX_INPUTS_BYTES
from app.workflows.inputs import INPUT_NAME_RE, MAX_INPUT_NAME
from app.xrpc.errors import InvalidRequest, NotFound
from app.xrpc.lexicon import lexicons

QUERY_NSID = "sh.tangled.ci.queryPipelines"
GET_NSID = "sh.tangled.ci.getPipeline"
SUBSCRIBE_NSID = "sh.tangled.ci.subscribePipelineLogs"
CANCEL_NSID = "sh.tangled.ci.cancelPipeline"
TRIGGER_NSID = "sh.tangled.ci.triggerPipeline"
DESCRIBE_NSID = "sh.tangled.ci.describeWorkflowDefinition"
PIPELINE_NSID = "sh.tangled.ci.pipeline"
CI_TRIGGER_NSID = "sh.tangled.ci.trigger"
MANUAL = f"{CI_TRIGGER_NSID}#manual"
PULL_REQUEST = f"{CI_TRIGGER_NSID}#pullRequest"
PUSH = f"{CI_TRIGGER_NSID}#push"

MAX_BODY_BYTES = 64 * 1024
DEFAULT_LIMIT = 50
MAX_COMMITS = 100  # commits of one queryPipelines: an IN list, bounded
MAX_WORKFLOWS = 50  # workflow names of one request (ci.pipeline holds at most 50)
MAX_NAME_CHARS = 255
MAX_REF_CHARS = 1024
PR_ACTIONS = ("opened", "reopened", "closed", "merged", "synchronize")
_CURSOR_RE = re.compile(r"^[0-9]{1,19}\Z")


class PipelineNotFound(NotFound, status=404):
    """No pipeline with that id (the lexicon's `PipelineNotFound`)."""


class WorkflowNotFound(NotFound, status=404):
    """A workflow name the pipeline does not have (subscribePipelineLogs' `WorkflowNotFound`)."""


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def _name(value: str, where: str) -> str:
    if not value or len(value) > MAX_NAME_CHARS or any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"{where} must be a workflow name, not {_shown(value)}")
    return value


def _names(values: list[str], where: str) -> tuple[str, ...]:
    if len(values) > MAX_WORKFLOWS:
        raise InvalidRequest(f"{where} names {len(values)} workflows: at most {MAX_WORKFLOWS}")
    return tuple(dict.fromkeys(_name(v, f"{where}[{i}]") for i, v in enumerate(values)))


def _commit(value: str, where: str) -> str:
    if not COMMIT_RE.match(value):
        raise InvalidRequest(f"{where} must be a full commit id (40 or 64 hex digits), not {_shown(value)}")
    return value.lower()


# -- queries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryInput:
    repo: str
    commits: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT
    before: int | None = None  # the cursor: pipelines with a smaller row id


_parse_query = lexicons().params_parser(QUERY_NSID)


def parse_query(pairs: Iterable[tuple[str, str]]) -> QueryInput:
    params = _parse_query(pairs)
    commits = params.get("commits", [])
    if len(commits) > MAX_COMMITS:
        raise InvalidRequest(f"commits has {len(commits)} entries: at most {MAX_COMMITS}")
    cursor = params.get("cursor")
    # Our cursors are row ids; anything else was not given by us.
    if cursor is not None and not _CURSOR_RE.match(cursor):
        raise InvalidRequest(f"cursor {_shown(cursor)} is not a cursor this spindle gave")
    return QueryInput(
        repo=params["repo"],
        commits=tuple(dict.fromkeys(_commit(c, f"commits[{i}]") for i, c in enumerate(commits))),
        kinds=tuple(dict.fromkeys(params.get("kinds", []))),
        limit=params.get("limit", DEFAULT_LIMIT),
        before=int(cursor) if cursor is not None else None,
    )


_parse_get = lexicons().params_parser(GET_NSID)


def parse_get(pairs: Iterable[tuple[str, str]]) -> str:
    """The pipeline id asked for."""
    return str(_parse_get(pairs)["pipeline"])


@dataclass(frozen=True)
class SubscribeInput:
    pipeline: str
    workflows: tuple[str, ...] = ()


_parse_subscribe = lexicons().params_parser(SUBSCRIBE_NSID)


def parse_subscribe(pairs: Iterable[tuple[str, str]]) -> SubscribeInput:
    params = _parse_subscribe(pairs)
    return SubscribeInput(params["pipeline"], _names(params.get("workflows", []), "workflows"))


@dataclass(frozen=True)
class DescribeInput:
    repo: str
    sha: str
    source_repo: str | None = None


_parse_describe = lexicons().params_parser(DESCRIBE_NSID)


def parse_describe(pairs: Iterable[tuple[str, str]]) -> DescribeInput:
    params = _parse_describe(pairs)
    return DescribeInput(params["repo"], _commit(params["sha"], "sha"), params.get("sourceRepo"))


# -- procedures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelInput:
    repo: str
    pipeline: str
    workflows: tuple[str, ...] = ()


_validate_cancel = lexicons().input_validator(CANCEL_NSID)


def parse_cancel(body: Any) -> CancelInput:
    _validate_cancel(body)
    return CancelInput(body["repo"], body["pipeline"], _names(body.get("workflows", []), "workflows"))


@dataclass(frozen=True)
class TriggerInput:
    """A checked triggerPipeline request: a manual run or a pull request's, at `sha`."""

    repo: str
    kind: str  # manual | pull_request
    sha: str
    workflows: tuple[str, ...] = ()
    ref: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    source_repo: str | None = None
    # pull_request only
    source_branch: str | None = None
    target_branch: str | None = None
    action: str | None = None
    pull: str | None = None


_validate_trigger = lexicons().input_validator(TRIGGER_NSID)


def _inputs(pairs: list[dict[str, str]]) -> dict[str, str]:
    if len(pairs) > MAX_INPUTS:
        raise InvalidRequest(f"trigger.inputs has {len(pairs)} pairs: at most {MAX_INPUTS} are allowed")
    inputs: dict[str, str] = {}
    for index, pair in enumerate(pairs):
        key, value = pair["key"], pair["value"]
        where = f"trigger.inputs[{index}].key"
        if len(key) > MAX_INPUT_NAME or not INPUT_NAME_RE.fullmatch(key):
            raise InvalidRequest(
                f"{where} {_shown(key)} must match {INPUT_NAME_RE.pattern}, up to {MAX_INPUT_NAME}"
            )
        if key in inputs:
            raise InvalidRequest(f"{where} {_shown(key)} is given twice")
        inputs[key] = value
    if (
        sum(len(k) + len(v.encode("utf-8", errors="surrogatepass")) for k, v in inputs.items())
        > MAX_INPUTS_BYTES
    ):
        raise InvalidRequest(f"trigger.inputs are larger than {MAX_INPUTS_BYTES // 1024} KiB in total")
    return inputs


def _text(value: str | None, where: str, limit: int = MAX_REF_CHARS) -> str | None:
    if value is None:
        return None
    if not value or len(value) > limit or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise InvalidRequest(f"{where} must be 1-{limit} printable characters, not {_shown(value)}")
    return value


def parse_trigger(body: Any) -> TriggerInput:
    _validate_trigger(body)
    trigger = body["trigger"]
    kind = trigger["$type"]
    workflows = _names(body.get("workflows", []), "workflows")
    if kind == MANUAL:
        return TriggerInput(
            repo=body["repo"],
            kind="manual",
            sha=_commit(trigger["sha"], "trigger.sha"),
            workflows=workflows,
            ref=_text(trigger.get("ref"), "trigger.ref"),
            inputs=_inputs(trigger.get("inputs", [])),
            source_repo=trigger.get("sourceRepo"),
        )
    if kind == PULL_REQUEST:
        return TriggerInput(
            repo=body["repo"],
            kind="pull_request",
            sha=_commit(trigger["sourceSha"], "trigger.sourceSha"),
            workflows=workflows,
            source_repo=trigger.get("sourceRepo"),
            source_branch=_text(trigger.get("sourceBranch"), "trigger.sourceBranch"),
            target_branch=_text(trigger["targetBranch"], "trigger.targetBranch"),
            action=trigger.get("action"),
            pull=trigger.get("pull"),
        )
    raise InvalidRequest(f"trigger.$type must be {MANUAL} or {PULL_REQUEST}, not {_shown(kind)}")
