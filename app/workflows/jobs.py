"""What a workflow runs: its name, env, defaults and jobs, with their steps, strategy, runner
labels, container and services, checked and typed.

This part of a file is read when a run first asks for it (Workflow.jobs), not when the trigger
accepts the file: what cannot work (a step with neither `run` nor `uses`, `needs` naming a job
that does not exist, a malformed `uses:`) raises WorkflowError with the path of the offending
key, and the run fails with it. Keys that no engine acts on (permissions, concurrency ...) are
accepted, so that a workflow written for GitHub loads; the top-level ones are listed in
`Definition.ignored` for the run's log.

Values that may hold `${{ }}` expressions stay as written (`Scalar`): they are evaluated when
the job runs, with the contexts of that moment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.workflows.exceptions import WorkflowError
from app.workflows.expressions import (
    Evaluation,
    ExpressionError,
    evaluate_value,
    interpolate,
    kind,
    to_string,
)
from app.workflows.uses import Uses, parse_uses

ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")
MAX_JOBS = 256
MAX_STEPS = 1000

# A YAML scalar as written; a string may hold `${{ }}` expressions.
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class RunDefaults:
    shell: str | None = None
    working_directory: str | None = None

    def over(self, fallback: RunDefaults) -> RunDefaults:
        """These defaults, each one not set taken from `fallback` (a job's over its workflow's)."""
        return RunDefaults(
            shell=self.shell or fallback.shell,
            working_directory=self.working_directory or fallback.working_directory,
        )


@dataclass(frozen=True)
class Step:
    index: int  # position in the job, from 0
    id: str | None
    name: str | None
    run: str | None
    uses: Uses | None
    with_: Mapping[str, Scalar]
    env: Env
    if_: Scalar
    shell: str | None
    working_directory: str | None
    continue_on_error: Scalar
    timeout_minutes: Scalar


@dataclass(frozen=True)
class Strategy:
    matrix: Mapping[str, Any] | str | None  # a map, or a `${{ }}` string evaluated at run time
    fail_fast: Scalar = True
    max_parallel: Scalar = None


@dataclass(frozen=True)
class RunsOn:
    labels: tuple[str, ...]  # each may be an expression, which may give a list of labels
    group: str | None = None


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Container:
    """A job's `container:` or one of its `services:`."""

    image: str
    credentials: Credentials | None = None
    env: Env = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    options: str | None = None
    # A service's `command` and `entrypoint` (GitHub's overrides of the image's CMD and ENTRYPOINT).
    command: str | None = None
    entrypoint: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    name: Scalar
    needs: tuple[str, ...]
    if_: Scalar
    runs_on: RunsOn | None
    env: Env
    defaults: RunDefaults
    steps: tuple[Step, ...]
    strategy: Strategy | None
    outputs: Mapping[str, str]
    timeout_minutes: Scalar
    continue_on_error: Scalar
    container: Container | None = None
    services: Mapping[str, Container] = field(default_factory=dict)
    uses: Uses | None = None  # a reusable workflow


@dataclass(frozen=True)
class Definition:
    name: str
    env: Env
    defaults: RunDefaults
    jobs: Mapping[str, Job]
    ignored: tuple[str, ...] = ()  # top-level keys accepted but not acted on


# ---------------------------------------------------------------------------------------------
# Reading


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


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, Mapping | list):
        raise WorkflowError(f"{where} must be a string, number or boolean, got {_describe(value)}")
    return value  # type: ignore[no-any-return]


def _optional_str(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping | list):
        raise WorkflowError(f"{where} must be a string, got {_describe(value)}")
    return to_string(value) if not isinstance(value, str) else value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """A list of scalars (a lone scalar for a list of one) as strings; nulls are left out."""
    items = value if isinstance(value, list) else [value]
    texts = (_optional_str(item, f"{where}[{i}]") for i, item in enumerate(items))
    return tuple(text for text in texts if text is not None)


@dataclass(frozen=True)
class EnvExpression:
    """`env: ${{ ... }}`: one expression that gives the whole map when the run evaluates it."""

    text: str


# An `env:` as written: a map of names to (templated) values, or one expression.
Env = Mapping[str, str] | EnvExpression


def env_texts(env: Env) -> tuple[str, ...]:
    """The templates an `env:` holds, to look through without evaluating them."""
    return (env.text,) if isinstance(env, EnvExpression) else tuple(env.values())


def resolve_env(env: Env, evaluation: Evaluation, where: str) -> dict[str, str]:
    """The variables of an `env:` with its expressions evaluated; ExpressionError names `where`."""
    if isinstance(env, EnvExpression):
        value = evaluate_value(env.text, evaluation)
        if not isinstance(value, Mapping):
            raise ExpressionError(f"{where} must give a map of variables, got {kind(value)}")
        return {str(key): to_string(item) for key, item in value.items()}
    return {key: interpolate(value, evaluation) for key, value in env.items()}


def _env(value: Any, where: str) -> Env:
    if isinstance(value, str) and value.strip().startswith("${{") and value.strip().endswith("}}"):
        return EnvExpression(value)
    env = _map(value, where)
    out: dict[str, str] = {}
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


def _step(raw: Any, index: int, where: str) -> Step:
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
    with_ = _map(data.get("with"), f"{where}.with")
    return Step(
        index=index,
        id=step_id,
        name=_optional_str(data.get("name"), f"{where}.name"),
        run=run,
        uses=parse_uses(uses, f"{where}.uses") if uses is not None else None,
        with_={key: _scalar(value, f"{where}.with.{key}") for key, value in with_.items()},
        env=_env(data.get("env"), f"{where}.env"),
        if_=_scalar(data.get("if"), f"{where}.if"),
        shell=_optional_str(data.get("shell"), f"{where}.shell"),
        working_directory=_optional_str(data.get("working-directory"), f"{where}.working-directory"),
        continue_on_error=_scalar(data.get("continue-on-error", False), f"{where}.continue-on-error"),
        timeout_minutes=_scalar(data.get("timeout-minutes"), f"{where}.timeout-minutes"),
    )


def parse_step(raw: Any, index: int, where: str) -> Step:
    """One step mapping as written (a composite action's steps are read with this too)."""
    return _step(raw, index, where)


def _strategy(value: Any, where: str) -> Strategy | None:
    if value is None:
        return None
    data = _map(value, where)
    matrix = data.get("matrix")
    if matrix is not None and not isinstance(matrix, Mapping | str):
        raise WorkflowError(f"{where}.matrix must be a map, got {_describe(matrix)}")
    return Strategy(
        matrix=matrix,
        fail_fast=_scalar(data.get("fail-fast", True), f"{where}.fail-fast"),
        max_parallel=_scalar(data.get("max-parallel"), f"{where}.max-parallel"),
    )


def _runs_on(value: Any, where: str) -> RunsOn | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        data = _map(value, where)
        return RunsOn(
            labels=_strings(data.get("labels"), f"{where}.labels"),
            group=_optional_str(data.get("group"), f"{where}.group"),
        )
    return RunsOn(labels=_strings(value, where))


def _container(value: Any, where: str) -> Container:
    """`container:` or a service: an image name, or a map with `image` and its settings."""
    if not isinstance(value, Mapping):
        image = _optional_str(value, where)
        if not image:
            raise WorkflowError(f"{where} must name an image")
        return Container(image=image)
    data = _map(value, where)
    image = _optional_str(data.get("image"), f"{where}.image")
    if not image:
        raise WorkflowError(f"{where}.image must name an image")
    credentials = None
    if data.get("credentials") is not None:
        given = _map(data["credentials"], f"{where}.credentials")
        credentials = Credentials(
            username=_optional_str(given.get("username"), f"{where}.credentials.username") or "",
            password=_optional_str(given.get("password"), f"{where}.credentials.password") or "",
        )
    for key in ("ports", "volumes"):
        if not isinstance(data.get(key), list | None):
            raise WorkflowError(f"{where}.{key} must be a list, got {_describe(data[key])}")
    return Container(
        image=image,
        credentials=credentials,
        env=_env(data.get("env"), f"{where}.env"),
        ports=_strings(data.get("ports"), f"{where}.ports"),
        volumes=_strings(data.get("volumes"), f"{where}.volumes"),
        options=_optional_str(data.get("options"), f"{where}.options"),
        command=_optional_str(data.get("command"), f"{where}.command"),
        entrypoint=_optional_str(data.get("entrypoint"), f"{where}.entrypoint"),
    )


def _job(job_id: str, raw: Any) -> Job:
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
    steps = tuple(_step(s, i, f"{where}.steps[{i}]") for i, s in enumerate(steps_raw or []))
    seen: set[str] = set()
    for step in steps:
        if step.id is not None:
            if step.id in seen:
                raise WorkflowError(f"{where}.steps: the id {step.id!r} is used by two steps")
            seen.add(step.id)
    outputs = _map(data.get("outputs"), f"{where}.outputs")
    container = data.get("container")
    services = _map(data.get("services"), f"{where}.services")
    return Job(
        id=job_id,
        name=_scalar(data.get("name"), f"{where}.name"),
        needs=tuple(dict.fromkeys(needs)),
        if_=_scalar(data.get("if"), f"{where}.if"),
        runs_on=_runs_on(data.get("runs-on"), f"{where}.runs-on"),
        env=_env(data.get("env"), f"{where}.env"),
        defaults=_defaults(data.get("defaults"), f"{where}.defaults"),
        steps=steps,
        strategy=_strategy(data.get("strategy"), f"{where}.strategy"),
        outputs={k: v if isinstance(v, str) else to_string(v) for k, v in outputs.items()},
        timeout_minutes=_scalar(data.get("timeout-minutes"), f"{where}.timeout-minutes"),
        continue_on_error=_scalar(data.get("continue-on-error", False), f"{where}.continue-on-error"),
        container=_container(container, f"{where}.container") if container is not None else None,
        services={
            name: _container(service, f"{where}.services.{name}") for name, service in services.items()
        },
        uses=parse_uses(uses, f"{where}.uses", job=True) if uses is not None else None,
    )


_KNOWN_TOP = {"name", "run-name", "on", "env", "defaults", "jobs", "permissions", "concurrency"}


def parse_definition(document: Mapping[str, Any], *, default_name: str) -> Definition:
    """The checked name, env, defaults and jobs of a parsed workflow document."""
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
        jobs[job_id] = _job(job_id, raw)
    for job in jobs.values():
        for need in job.needs:
            if need not in jobs:
                raise WorkflowError(
                    f"jobs.{job.id}.needs names {need!r}, which is not a job of this workflow"
                )
    return Definition(
        name=_optional_str(data.get("name"), "name") or default_name,
        env=_env(data.get("env"), "env"),
        defaults=_defaults(data.get("defaults"), "defaults"),
        jobs=jobs,
        ignored=tuple(sorted(k for k in data if k not in _KNOWN_TOP)),
    )
