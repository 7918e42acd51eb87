"""A GitHub Actions workflow file as the engine runs it: a checked model of the document.

The YAML itself is read by app/workflows/parser.py (YAML 1.2 core schema, bounded size, no
duplicate keys), the same reader the trigger uses to accept the file.

Everything the engine does not run is still accepted here (permissions, concurrency, container,
services, environment ...) so that a workflow written for GitHub loads; the runner logs a line
about what it ignores. What cannot work (a step with neither `run` nor `uses`, `needs` naming
a job that does not exist, a cycle) raises WorkflowError with the path of the offending key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.workflows import parser
from app.workflows.exceptions import InvalidWorkflow
from app.workflows.expressions import to_string

ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")
MAX_JOBS = 256
MAX_STEPS = 1000


class WorkflowError(ValueError):
    """A workflow the engine cannot run; the message names the offending key."""


# ---------------------------------------------------------------------------------------------
# Model


@dataclass
class RunDefaults:
    shell: str | None = None
    working_directory: str | None = None


@dataclass
class Step:
    index: int  # position in the job, from 0
    id: str | None
    name: str | None
    run: str | None
    uses: str | None
    with_: dict[str, Any]
    env: dict[str, Any]
    if_: Any
    shell: str | None
    working_directory: str | None
    continue_on_error: Any
    timeout_minutes: Any


@dataclass
class Strategy:
    matrix: Any  # a map, or a `${{ }}` string evaluated at run time
    fail_fast: Any = True
    max_parallel: Any = None


@dataclass
class Job:
    id: str
    name: Any
    needs: list[str]
    if_: Any
    runs_on: Any
    env: dict[str, Any]
    defaults: RunDefaults
    steps: list[Step]
    strategy: Strategy | None
    outputs: dict[str, Any]
    timeout_minutes: Any
    continue_on_error: Any
    container: Any = None
    services: Any = None
    uses: str | None = None  # a reusable workflow: not run here


@dataclass
class DispatchInput:
    name: str
    type: str  # string | boolean | number | choice | environment
    default: Any = None


@dataclass
class Workflow:
    name: str
    env: dict[str, Any]
    defaults: RunDefaults
    jobs: dict[str, Job]
    inputs: dict[str, DispatchInput] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # top-level keys accepted but not acted on


# ---------------------------------------------------------------------------------------------
# Parsing


def _map(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WorkflowError(f"{where} must be a map, got {_describe(value)}")
    return {str(k): v for k, v in value.items()}


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a map"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {str(value)[:60]!r}"


def _optional_str(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping | list):
        raise WorkflowError(f"{where} must be a string, got {_describe(value)}")
    return to_string(value) if not isinstance(value, str) else value


def _env(value: Any, where: str) -> dict[str, Any]:
    env = _map(value, where)
    out: dict[str, Any] = {}
    for key, item in env.items():
        if isinstance(item, Mapping | list):
            raise WorkflowError(f"{where}.{key} must be a string, number or boolean, got {_describe(item)}")
        if not key or "=" in key or "\0" in key:
            raise WorkflowError(f"{where}: {key!r} is not a valid environment variable name")
        out[key] = "" if item is None else item if isinstance(item, str) else to_string(item)
    return out


def _defaults(value: Any, where: str) -> RunDefaults:
    run = _map(_map(value, where).get("run"), f"{where}.run")
    return RunDefaults(
        shell=_optional_str(run.get("shell"), f"{where}.run.shell"),
        working_directory=_optional_str(run.get("working-directory"), f"{where}.run.working-directory"),
    )


def _parse_step(raw: Any, index: int, where: str) -> Step:
    data = _map(raw, where)
    run = _optional_str(data.get("run"), f"{where}.run")
    uses = _optional_str(data.get("uses"), f"{where}.uses")
    if (run is None) == (uses is None):
        raise WorkflowError(f"{where} must have exactly one of 'run' or 'uses'")
    step_id = _optional_str(data.get("id"), f"{where}.id")
    if step_id is not None and not ID_RE.match(step_id):
        raise WorkflowError(
            f"{where}.id {step_id!r} must start with a letter or _ and hold only A-Z a-z 0-9 - _"
        )
    return Step(
        index=index,
        id=step_id,
        name=_optional_str(data.get("name"), f"{where}.name"),
        run=run,
        uses=uses,
        with_=_map(data.get("with"), f"{where}.with"),
        env=_env(data.get("env"), f"{where}.env"),
        if_=data.get("if"),
        shell=_optional_str(data.get("shell"), f"{where}.shell"),
        working_directory=_optional_str(data.get("working-directory"), f"{where}.working-directory"),
        continue_on_error=data.get("continue-on-error", False),
        timeout_minutes=data.get("timeout-minutes"),
    )


def _parse_job(job_id: str, raw: Any) -> Job:
    where = f"jobs.{job_id}"
    data = _map(raw, where)
    needs_raw = data.get("needs", [])
    needs = [needs_raw] if isinstance(needs_raw, str) else needs_raw
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise WorkflowError(f"{where}.needs must be a job id or a list of job ids")
    uses = _optional_str(data.get("uses"), f"{where}.uses")
    steps_raw = data.get("steps")
    if uses is None:
        if not isinstance(steps_raw, list) or not steps_raw:
            raise WorkflowError(f"{where}.steps must be a non-empty list")
        if len(steps_raw) > MAX_STEPS:
            raise WorkflowError(f"{where}.steps has more than {MAX_STEPS} steps")
    steps = [_parse_step(s, i, f"{where}.steps[{i}]") for i, s in enumerate(steps_raw or [])]
    seen: set[str] = set()
    for step in steps:
        if step.id is not None:
            if step.id in seen:
                raise WorkflowError(f"{where}.steps: the id {step.id!r} is used by two steps")
            seen.add(step.id)
    strategy_raw = data.get("strategy")
    strategy = None
    if strategy_raw is not None:
        s = _map(strategy_raw, f"{where}.strategy")
        matrix = s.get("matrix")
        if matrix is not None and not isinstance(matrix, Mapping | str):
            raise WorkflowError(f"{where}.strategy.matrix must be a map, got {_describe(matrix)}")
        strategy = Strategy(
            matrix=matrix, fail_fast=s.get("fail-fast", True), max_parallel=s.get("max-parallel")
        )
    outputs = _map(data.get("outputs"), f"{where}.outputs")
    return Job(
        id=job_id,
        name=data.get("name"),
        needs=list(dict.fromkeys(needs)),
        if_=data.get("if"),
        runs_on=data.get("runs-on"),
        env=_env(data.get("env"), f"{where}.env"),
        defaults=_defaults(data.get("defaults"), f"{where}.defaults"),
        steps=steps,
        strategy=strategy,
        outputs={k: v if isinstance(v, str) else to_string(v) for k, v in outputs.items()},
        timeout_minutes=data.get("timeout-minutes"),
        continue_on_error=data.get("continue-on-error", False),
        container=data.get("container"),
        services=data.get("services"),
        uses=uses,
    )


def _dispatch_inputs(on: Any) -> dict[str, DispatchInput]:
    if not isinstance(on, Mapping):
        return {}
    dispatch = on.get("workflow_dispatch")
    if not isinstance(dispatch, Mapping) or not isinstance(dispatch.get("inputs"), Mapping):
        return {}
    inputs = {}
    for name, spec in dispatch["inputs"].items():
        spec = spec if isinstance(spec, Mapping) else {}
        inputs[str(name)] = DispatchInput(str(name), str(spec.get("type", "string")), spec.get("default"))
    return inputs


_KNOWN_TOP = {"name", "run-name", "on", "env", "defaults", "jobs", "permissions", "concurrency"}


def parse_workflow(source: str, *, path: str, default_name: str) -> Workflow:
    """The checked model of a workflow file's text."""
    try:
        document = parser.parse_workflow(path, source).document
    except InvalidWorkflow as exc:
        raise WorkflowError(exc.problem) from None
    data = {str(k): v for k, v in document.items()}
    jobs_raw = _map(data.get("jobs"), "jobs")
    if not jobs_raw:
        raise WorkflowError("the workflow has no jobs")
    if len(jobs_raw) > MAX_JOBS:
        raise WorkflowError(f"the workflow has more than {MAX_JOBS} jobs")
    jobs: dict[str, Job] = {}
    for job_id, raw in jobs_raw.items():
        if not ID_RE.match(job_id):
            raise WorkflowError(
                f"jobs.{job_id}: a job id must start with a letter or _ and hold only A-Z a-z 0-9 - _"
            )
        jobs[job_id] = _parse_job(job_id, raw)
    for job in jobs.values():
        for need in job.needs:
            if need not in jobs:
                raise WorkflowError(
                    f"jobs.{job.id}.needs names {need!r}, which is not a job of this workflow"
                )
    name = _optional_str(data.get("name"), "name") or default_name
    return Workflow(
        name=name,
        env=_env(data.get("env"), "env"),
        defaults=_defaults(data.get("defaults"), "defaults"),
        jobs=jobs,
        inputs=_dispatch_inputs(data.get("on")),
        ignored=sorted(k for k in data if k not in _KNOWN_TOP),
    )
