"""Runs one workflow run: jobs in `needs` order, matrix instances, steps, env files, outputs.

Jobs run one after another (a job starts when every job it needs has finished), each matrix
combination as its own job instance with fresh directories. Within an instance, steps run in
order; a failed step fails the job unless `continue-on-error`, later steps run only when their
`if:` allows (default `success()`). The run ends:
    success    every job succeeded (or failed under continue-on-error)
    failed     the first failing step's message and exit code
    timeout    the first failure was a step or job running past its timeout-minutes
    cancelled  cancel() was called while work remained: the running step is killed, nothing
               else starts (steps guarded by always() do not run after a cancel either)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import re
import shlex
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.engine import action_steps, checkout, fetch, hashfiles
from app.engine.actions import ActionCache
from app.engine.backend import (
    Backend,
    EngineUnavailable,
    ExecRequest,
    ExecResult,
    FileCommandError,
    JobSetupError,
    JobSpec,
    Limits,
    OutputSink,
    ServiceSpec,
)
from app.engine.backend import Job as EngineJob
from app.engine.container.options import ContainerOptions, OptionsError, parse_options
from app.engine.context import RunSpec, Workspace, github_context, runner_context, standard_env
from app.engine.logs import LogSink
from app.metrics import Metrics
from app.runs.models import Status
from app.workflows.exceptions import InvalidWorkflow, WorkflowError
from app.workflows.expressions import (
    Evaluation,
    ExpressionError,
    evaluate_condition,
    evaluate_value,
    interpolate,
    to_number,
    to_string,
    truthy,
)
from app.workflows.inputs import inputs_context
from app.workflows.jobs import Container, Env, EnvExpression, Job, RunDefaults, Step, env_texts, resolve_env
from app.workflows.planner import expand_matrix, instance_name, job_order
from app.workflows.workflow import Workflow, parse_workflow

MAX_FILE_COMMAND_BYTES = 1024 * 1024  # GitHub's limit for a step's outputs
ACCEPTED_RUNNERS = re.compile(r"^(ubuntu(-.*)?|self-hosted|linux|x64|arm64)$", re.IGNORECASE)
# Runners this spindle does not have: a job or matrix leg that asks for one is not run, and
# does not fail the run (its log line names the runner).
OTHER_OS_RUNNERS = re.compile(r"^(windows|macos|macOS|win)(-.*)?$", re.IGNORECASE)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HASH_FILES_TIMEOUT = 120.0
FILE_COMMANDS = ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_PATH", "GITHUB_STEP_SUMMARY", "GITHUB_STATE")
PROTECTED_ENV = re.compile(r"^(GITHUB_|RUNNER_)")
SHELLS = {
    "bash": ("bash --noprofile --norc -eo pipefail {0}", ".sh"),
    "sh": ("sh -e {0}", ".sh"),
    "python": ("python {0}", ".py"),
    "pwsh": ("pwsh -command \". '{0}'\"", ".ps1"),
}


@dataclass
class Failure:
    status: Status  # FAILED or TIMEOUT
    error: str
    exit_code: int | None = None


@dataclass
class RunOutcome:
    status: Status
    error: str | None = None
    exit_code: int | None = None


@dataclass
class JobResult:
    result: str  # success | failure | cancelled | skipped (the `needs.<id>.result` values)
    outputs: dict[str, str] = field(default_factory=dict)
    failure: Failure | None = None  # what fails the run; None when the failure is allowed


@dataclass
class StepOutcome:
    outcome: str  # success | failure | cancelled
    error: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    job_timed_out: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    saved_state: dict[str, str] = field(default_factory=dict)  # what the process wrote to GITHUB_STATE


class StepError(Exception):
    """A step that cannot start (bad shell, missing working-directory, expression error)."""


class StepsStatus:
    """success()/failure()/cancelled() for a sequence of steps: a job instance's, or a composite
    action's own (its status functions are about its steps)."""

    def __init__(self, cancel: asyncio.Event) -> None:
        self.failed = False
        self.cancel = cancel

    def success(self) -> bool:
        return not self.failed and not self.cancel.is_set()

    def failure(self) -> bool:
        return self.failed

    def cancelled(self) -> bool:
        return self.cancel.is_set()


class _NeedsStatus:
    """success()/failure()/cancelled() for a job's `if:`: about every job it depends on."""

    def __init__(self, results: list[str], cancel: asyncio.Event) -> None:
        self.results = results
        self.cancel = cancel

    def success(self) -> bool:
        return all(r == "success" for r in self.results) and not self.cancel.is_set()

    def failure(self) -> bool:
        return any(r == "failure" for r in self.results)

    def cancelled(self) -> bool:
        return self.cancel.is_set()


def _minutes(value: Any, evaluation: Evaluation, where: str) -> float | None:
    if value is None:
        return None
    number = to_number(evaluate_value(value, evaluation))
    if not number > 0:
        raise StepError(f"{where} must be a positive number of minutes, got {to_string(value)!r}")
    return number


def parse_file_command(text: str, what: str) -> dict[str, str]:
    """`NAME=value` lines and `NAME<<DELIMITER` … `DELIMITER` blocks (GITHUB_ENV, GITHUB_OUTPUT)."""
    values: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc > 0 and (equals == -1 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            try:
                end = lines.index(delimiter, i)
            except ValueError:
                raise StepError(f"{what}: no line {delimiter!r} closes the value of {name!r}") from None
            values[name] = "\n".join(lines[i:end])
            i = end + 1
        elif equals > 0:
            values[line[:equals]] = line[equals + 1 :]
        else:
            raise StepError(f"{what}: line {line[:80]!r} is neither NAME=value nor NAME<<DELIMITER")
    return values


def shell_command(shell: str | None, *, commands: frozenset[str]) -> tuple[list[str], str]:
    """(argv template with {0}, script extension) for a step's `shell`, given the image's commands."""
    if shell is None:
        # GitHub's default on Linux: bash without pipefail, sh where there is no bash.
        template = "bash -e {0}" if "bash" in commands else "sh -e {0}"
        return shlex.split(template), ".sh"
    name = shell.strip()
    if name in SHELLS:
        template, extension = SHELLS[name]
        if name == "python" and "python" not in commands:
            template = "python3 {0}"
        return shlex.split(template), extension
    if name in ("cmd", "powershell"):
        raise StepError(f"shell {name!r} is Windows-only; this spindle runs steps on Linux")
    if "{0}" in name:
        return shlex.split(name), ""
    raise StepError(
        f"shell {name!r} is not supported: use bash, sh, python, pwsh or a command line with {{0}}"
    )


# The fetched `.git` is in place: the files of the commit, checked out in the container.
_PLACE = r"""
dest=$1 commit=$2
cd "$dest"
git -c core.hooksPath=/dev/null -c safe.directory='*' -c advice.detachedHead=false \
  checkout -q -f --detach "$commit" &&
git -c safe.directory='*' log -1 --format='HEAD is now at %h %s'
"""


@contextlib.asynccontextmanager
async def _either(first: asyncio.Event, second: asyncio.Event | None) -> AsyncIterator[asyncio.Event]:
    """An event set as soon as either one is (the run's cancel, a matrix leg's fail-fast stop)."""
    if second is None:
        yield first
        return
    both = asyncio.Event()

    async def watch(event: asyncio.Event) -> None:
        await event.wait()
        both.set()

    watchers = [asyncio.create_task(watch(first)), asyncio.create_task(watch(second))]
    try:
        yield both
    finally:
        for watcher in watchers:
            watcher.cancel()


def other_os_runner(labels: list[str]) -> str | None:
    """The Windows or macOS runner among `labels`, which this spindle does not have."""
    return next((label for label in labels if OTHER_OS_RUNNERS.match(label)), None)


def _calls_hash_files(step: Step) -> bool:
    values = [step.name, step.run, step.shell, step.working_directory, step.if_, *env_texts(step.env)]
    values += list(step.with_.values())
    return any(isinstance(v, str) and "hashfiles(" in v.lower() for v in values)


def _container_port(mapping: str) -> str:
    """`8080:80/tcp`, `127.0.0.1:8080:80`, `5432` → the container's port (`80`, `80`, `5432`)."""
    return mapping.rsplit(":", 1)[-1].split("/", 1)[0]


def _step_label(step: Step) -> str:
    if step.run is not None:
        first = next((line.strip() for line in step.run.splitlines() if line.strip()), "")
        return f"Run {first[:80]}"
    return f"Run {step.uses}"


class WorkflowRunner:
    """Executes one run on `backend`, writing its log to `logs`; `cancel` stops it.

    `scratch` is a host directory of the run's own (the checkout's fetches); it is removed at the
    end. Nothing a job controls is ever written there."""

    def __init__(
        self,
        *,
        backend: Backend,
        logs: LogSink,
        cancel: asyncio.Event,
        settings: Settings,
        scratch: Path,
        job_slots: asyncio.Semaphore | None = None,
        actions: ActionCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.logs = logs
        self.cancel = cancel
        self.settings = settings
        self.scratch = scratch
        self.fetcher = fetch.Fetcher(scratch)
        # Containers running at once, shared by every run of the process (SPINDLE_MAX_JOBS).
        self.job_slots = job_slots or asyncio.Semaphore(settings.max_jobs)
        self.step_counter = 0
        self.file_counter = 0
        # Actions are fetched through the process's cache (SPINDLE_ACTIONS_*); tags and branches
        # resolve once for the whole run.
        self.actions = action_steps.ActionSteps(self, (actions or ActionCache(settings)).resolver())
        self.instance_counter = 0
        self.interrupted = False  # cancel stopped or skipped some work

    async def run(self, spec: RunSpec) -> RunOutcome:
        """Run every job; the outcome is what the run's final status says."""
        self.logs.notice(f"running {spec.path} of {spec.repository} at {spec.sha} ({spec.event_name})")
        try:
            self.backend.check()
        except EngineUnavailable as exc:
            self.logs.notice(str(exc))
            return RunOutcome(Status.FAILED, str(exc))
        self.logs.notice(f"jobs run in {self.backend.describe()}")
        try:
            workflow = parse_workflow(spec.path, spec.source)
            order = job_order(workflow.jobs)
        except (InvalidWorkflow, WorkflowError) as exc:
            error = f"invalid workflow {spec.path}: {exc.problem}"
            self.logs.notice(error)
            return RunOutcome(Status.FAILED, error)
        for key in workflow.definition.ignored:
            self.logs.notice(f"the workflow key {key!r} is not supported by this spindle and is ignored")
        results: dict[str, JobResult] = {}
        try:
            await self._run_jobs(spec, workflow, order, results)
        finally:
            self.actions.close()
            await asyncio.to_thread(shutil.rmtree, self.scratch, True)
        # The first failure in the workflow's job order, whatever order the jobs finished in.
        first_failure = next((results[j].failure for j in order if results[j].failure is not None), None)
        if self.cancel.is_set() and self.interrupted:
            self.logs.notice("the run was cancelled")
            return RunOutcome(Status.CANCELLED, "the run was cancelled")
        if first_failure is not None:
            return RunOutcome(first_failure.status, first_failure.error, first_failure.exit_code)
        return RunOutcome(Status.SUCCESS)

    # -- jobs ------------------------------------------------------------------------------------

    async def _run_jobs(
        self, spec: RunSpec, workflow: Workflow, order: list[str], results: dict[str, JobResult]
    ) -> None:
        """Every job, each started as soon as the jobs it needs have finished: independent jobs
        run at the same time (the process-wide job slots bound how many containers run)."""
        waiting = list(order)
        running: dict[asyncio.Task[JobResult], str] = {}
        try:
            while waiting or running:
                for job_id in [j for j in waiting if all(n in results for n in workflow.jobs[j].needs)]:
                    waiting.remove(job_id)
                    if self.cancel.is_set():
                        self.interrupted = True
                        results[job_id] = JobResult("cancelled")
                        continue
                    task = asyncio.create_task(self._run_job(spec, workflow, workflow.jobs[job_id], results))
                    running[task] = job_id
                if not running:
                    continue
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    results[running.pop(task)] = task.result()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    def _ancestors(workflow: Workflow, job: Job) -> list[str]:
        seen: list[str] = []
        stack = list(job.needs)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.append(current)
                stack.extend(workflow.jobs[current].needs)
        return seen

    async def _run_job(
        self, spec: RunSpec, workflow: Workflow, job: Job, results: dict[str, JobResult]
    ) -> JobResult:
        needs = {n: {"result": results[n].result, "outputs": results[n].outputs} for n in job.needs}
        base: dict[str, Any] = {
            "github": github_context(
                spec, workflow_name=workflow.definition.name, job_id=job.id, workspace=None
            ),
            "inputs": inputs_context(workflow.inputs, spec.inputs),
            "needs": needs,
            "vars": dict(self.settings.vars),
            # The repo's secrets, only ever through expressions: no step gets them as variables
            # unless the workflow maps them into env: itself.
            "secrets": dict(spec.secrets),
        }
        status = _NeedsStatus([results[a].result for a in self._ancestors(workflow, job)], self.cancel)
        try:
            should_run = evaluate_condition(job.if_, Evaluation(base, status))
        except ExpressionError as exc:
            return self._job_failure(f"job '{job.id}': if: {exc}")
        if not should_run:
            if job.if_ is None:
                self.logs.notice(f"job '{job.id}' skipped: a job it needs did not succeed")
            else:
                self.logs.notice(f"job '{job.id}' skipped: its if: condition is false")
            return JobResult("skipped")
        if job.uses is not None:
            return self._job_failure(
                f"job '{job.id}' calls the reusable workflow {str(job.uses)!r}, "
                "which this spindle does not run"
            )
        combinations: list[dict[str, Any]] = [{}]
        fail_fast = True
        try:
            if job.strategy is not None:
                evaluation = Evaluation(base)
                if job.strategy.matrix is not None:
                    matrix = evaluate_value(job.strategy.matrix, evaluation)
                    combinations = expand_matrix(matrix, f"jobs.{job.id}.strategy.matrix")
                fail_fast = truthy(evaluate_value(job.strategy.fail_fast, evaluation))
        except (ExpressionError, WorkflowError) as exc:
            return self._job_failure(f"job '{job.id}': {exc}")

        try:
            raw_parallel = (
                evaluate_value(job.strategy.max_parallel, Evaluation(base)) if job.strategy else None
            )
            max_parallel = (
                int(to_number(raw_parallel)) if raw_parallel not in (None, "") else len(combinations)
            )
        except ExpressionError as exc:
            return self._job_failure(f"job '{job.id}': strategy.max-parallel: {exc}")
        if max_parallel < 1:
            return self._job_failure(f"job '{job.id}': strategy.max-parallel must be at least 1")
        legs = asyncio.Semaphore(max_parallel)
        # fail-fast: the first failing leg stops the others, running or not yet started.
        stop = asyncio.Event()

        async def leg(index: int, combination: dict[str, Any]) -> JobResult:
            async with legs:
                if self.cancel.is_set():
                    self.interrupted = True
                    return JobResult("cancelled")
                if stop.is_set():
                    reason = "fail-fast: another combination of this job failed"
                    self.logs.notice(f"{instance_name(job.id, combination)} not run: {reason}")
                    return JobResult("cancelled")
                strategy = {
                    "fail-fast": fail_fast,
                    "job-index": index,
                    "job-total": len(combinations),
                    "max-parallel": max_parallel,
                }
                result = await self._run_instance(
                    spec, workflow, job, base, combination, strategy, stop=stop if fail_fast else None
                )
                if (
                    result.result == "failure"
                    and result.failure is not None
                    and fail_fast
                    and len(combinations) > 1
                ):
                    stop.set()
                return result

        instances = list(await asyncio.gather(*(leg(i, c) for i, c in enumerate(combinations))))
        failures = [r for r in instances if r.result == "failure" and r.failure is not None]
        outputs: dict[str, str] = {}
        for instance in instances:
            outputs.update({k: v for k, v in instance.outputs.items() if v != ""})
        if failures:
            return JobResult("failure", outputs, failures[0].failure)
        if any(r.result == "cancelled" for r in instances):
            return JobResult("cancelled", outputs)
        return JobResult("success", outputs)

    def _job_failure(self, error: str) -> JobResult:
        self.logs.notice(error)
        return JobResult("failure", failure=Failure(Status.FAILED, error))

    def _other_os(self, job: Job, evaluation: Evaluation, name: str) -> str | None:
        """The runner a job asks for when it is one this spindle does not have (Windows, macOS);
        a line about any other label it does not know."""
        labels: list[Any] = []
        for label in job.runs_on.labels if job.runs_on is not None else ():
            try:
                value = evaluate_value(label, evaluation)
            except ExpressionError:
                value = label
            labels.extend(value if isinstance(value, list) else [value])
        texts = [to_string(label) for label in labels if label is not None]
        other = other_os_runner(texts)
        if other is not None:
            return other
        odd = [label for label in texts if not ACCEPTED_RUNNERS.match(label)]
        if odd:
            self.logs.notice(
                f"{name}: runs-on {', '.join(odd)} is not available here; the job runs in a Linux container"
            )
        return None

    def _container_spec(
        self, spec: RunSpec, job: Job, evaluation: Evaluation, key: str, workspace: Workspace
    ) -> JobSpec:
        """The job's container and services, their expressions evaluated (matrix values included)."""
        limits = Limits(
            memory_mb=self.settings.job_memory_mb,
            max_processes=self.settings.job_max_processes,
            cpus=self.settings.job_cpus,
            disk_mb=self.settings.job_disk_mb,
        )
        env: dict[str, str] = {}
        image, options, credentials = self.settings.runner_image, parse_options(None), None
        if job.container is not None:
            image, env, options, credentials = self._container_parts(job.container, evaluation, "container")
        for flag in options.ignored:
            self.logs.notice(f"container options: {flag} is ignored by this spindle")
        services = []
        for service_id, service in job.services.items():
            s_image, s_env, s_options, s_credentials = self._container_parts(
                service, evaluation, f"services.{service_id}"
            )
            for flag in s_options.ignored:
                self.logs.notice(f"services.{service_id}.options: {flag} is ignored by this spindle")
            command = None
            if service.command:
                try:
                    command = tuple(shlex.split(interpolate(service.command, evaluation)))
                except ValueError as exc:
                    raise StepError(f"services.{service_id}.command: {exc}") from None
            if service.entrypoint:
                s_options.entrypoint = interpolate(service.entrypoint, evaluation)
            services.append(
                ServiceSpec(
                    id=service_id,
                    image=s_image,
                    env=s_env,
                    options=s_options,
                    ports=service.ports,
                    credentials=s_credentials,
                    command=command,
                )
            )
        return JobSpec(
            run_id=spec.run_id,
            job_key=key,
            image=image,
            limits=limits,
            network=self.settings.job_network,
            env=env,
            options=options,
            credentials=credentials,
            services=tuple(services),
            directories=workspace.directories,
        )

    @staticmethod
    def _container_parts(
        container: Container, evaluation: Evaluation, where: str
    ) -> tuple[str, dict[str, str], ContainerOptions, dict[str, str] | None]:
        image = to_string(interpolate(container.image, evaluation)).strip()
        if not image:
            raise StepError(f"{where}.image is empty")
        env = resolve_env(container.env, evaluation, f"{where}.env")
        try:
            options = parse_options(interpolate(container.options, evaluation) if container.options else None)
        except OptionsError as exc:
            raise StepError(f"{where}: {exc}") from None
        credentials = None
        if container.credentials is not None:
            credentials = {
                "username": interpolate(container.credentials.username, evaluation),
                "password": interpolate(container.credentials.password, evaluation),
            }
        return image, env, options, credentials

    async def _run_instance(
        self,
        spec: RunSpec,
        workflow: Workflow,
        job: Job,
        base: dict[str, Any],
        combination: dict[str, Any],
        strategy: dict[str, Any],
        *,
        stop: asyncio.Event | None = None,
    ) -> JobResult:
        self.instance_counter += 1
        key = f"{self.instance_counter:03d}-{job.id}"
        workspace = Workspace.for_repo(spec.repo_name)
        github = github_context(
            spec, workflow_name=workflow.definition.name, job_id=job.id, workspace=workspace
        )
        ctx: dict[str, Any] = {
            **base,
            "github": github,
            "matrix": combination,
            "strategy": strategy,
            "runner": runner_context(workspace),
            "job": {"status": "success"},
            "steps": {},
            "env": {},
        }
        evaluation = Evaluation(ctx)
        try:
            raw_name = job.name if job.name is not None else job.id
            name = to_string(evaluate_value(raw_name, evaluation))
        except ExpressionError:
            name = job.id
        if combination and "matrix" not in to_string(job.name or ""):
            name = instance_name(name, combination)
        other = self._other_os(job, evaluation, name)
        if other is not None:
            self.logs.notice(
                f"job {name} not run: it asks for a {other} runner, which this spindle does not have"
            )
            return JobResult("skipped")
        self.logs.notice(f"job {name}")
        try:
            workflow_env = resolve_env(workflow.definition.env, evaluation, "env")
            ctx["env"] = dict(workflow_env)
            job_env = resolve_env(job.env, Evaluation(ctx), f"jobs.{job.id}.env")
            ctx["env"] = {**workflow_env, **job_env}
            limit = self.settings.job_timeout_minutes
            minutes = min(_minutes(job.timeout_minutes, evaluation, "timeout-minutes") or limit, limit)
            allow_failure = truthy(evaluate_value(job.continue_on_error, evaluation))
            container = self._container_spec(spec, job, evaluation, key, workspace)
        except (ExpressionError, StepError) as exc:
            return self._job_failure(f"job '{name}': {exc}")
        async with self.job_slots, _either(self.cancel, stop) as cancel:
            if cancel.is_set():
                return JobResult("cancelled")
            started = time.monotonic()
            try:
                engine_job = await self.backend.setup_job(container, progress=self.logs.notice)
            except (JobSetupError, EngineUnavailable) as exc:
                return self._job_failure(f"job '{name}': {exc}")
            result = JobResult("failure")  # if _run_steps raises
            try:
                result = await self._run_steps(
                    spec, job, ctx, name, workspace, github, minutes, allow_failure, engine_job,
                    defaults=job.defaults.over(workflow.definition.defaults), cancel=cancel,
                )  # fmt: skip
                return result
            finally:
                await self.backend.destroy_job(engine_job)
                if self.metrics is not None:
                    self.metrics.job_finished(result.result, time.monotonic() - started)

    async def _run_steps(
        self,
        spec: RunSpec,
        job: Job,
        ctx: dict[str, Any],
        name: str,
        workspace: Workspace,
        github: dict[str, Any],
        minutes: float,
        allow_failure: bool,
        engine_job: EngineJob,
        *,
        defaults: RunDefaults,
        cancel: asyncio.Event,
    ) -> JobResult:
        await self.backend.put_files(
            engine_job, {workspace.event_path: json.dumps(spec.event_payload(), indent=2).encode()}
        )
        if job.services:
            # Services share the job's network namespace: each port is reachable on localhost as
            # itself, and nothing is published on the host.
            ctx["job"] = {
                **ctx["job"],
                "services": {
                    service_id: {
                        "id": engine_job.services.get(service_id, ""),
                        "network": engine_job.name,
                        "ports": {port: port for port in map(_container_port, service.ports)},
                    }
                    for service_id, service in job.services.items()
                },
            }
        state = _InstanceState(
            name=name,
            workspace=workspace,
            standard=standard_env(spec, github, workspace),
            env=ctx["env"],
            deadline=asyncio.get_running_loop().time() + minutes * 60,
            minutes=minutes,
            status=StepsStatus(cancel),
            defaults=defaults,
            job=engine_job,
            cancel=cancel,
        )
        # The `pre` of every action the job uses runs first, in step order, as on GitHub.
        await self.actions.run_pre(job.steps, ctx, state)
        for step in job.steps:
            if cancel.is_set():
                self.interrupted = self.interrupted or self.cancel.is_set()
                break
            ctx["steps"] = state.steps
            ctx["job"] = {**ctx["job"], "status": "failure" if state.status.failed else "success"}
            ctx["env"] = {**state.env, **state.github_env}
            outcome = await self._step(spec, step, ctx, state)
            if outcome is None:
                continue
            if outcome.outcome == "cancelled":
                self.interrupted = self.interrupted or self.cancel.is_set()
                break
            if outcome.job_timed_out:
                break
        # Then the `post` of every action that ran, last first.
        ctx["job"] = {**ctx["job"], "status": "failure" if state.status.failed else "success"}
        await self.actions.run_post(ctx, state)

        ctx["steps"] = state.steps
        outputs: dict[str, str] = {}
        for key, template in job.outputs.items():
            try:
                outputs[key] = interpolate(template, Evaluation(ctx))
            except ExpressionError as exc:
                self.logs.notice(f"job '{name}': outputs.{key}: {exc}")
        if cancel.is_set() and (self.interrupted or not self.cancel.is_set()):
            return JobResult("cancelled", outputs)
        if state.status.failed:
            if allow_failure:
                self.logs.notice(f"job '{name}' failed, but continue-on-error lets the run go on")
                return JobResult("success", outputs)
            return JobResult("failure", outputs, state.failure)
        return JobResult("success", outputs)

    # -- steps -----------------------------------------------------------------------------------

    async def _step(
        self, spec: RunSpec, step: Step, ctx: dict[str, Any], state: _InstanceState
    ) -> StepOutcome | None:
        """Decide whether `step` runs, run it, record its outcome; None when it was skipped."""
        state.hashes = {}
        if _calls_hash_files(step):
            await self._prime_hashes(step, ctx, state)
        evaluation = Evaluation(ctx, state.status, hash_files=state.hash_of)
        try:
            display = interpolate(step.name, evaluation) if step.name else _step_label(step)
        except ExpressionError:
            display = step.name or _step_label(step)
        where = f"step '{display}' of job '{state.name}'"
        try:
            should_run = evaluate_condition(step.if_, evaluation)
        except ExpressionError as exc:
            outcome = StepOutcome("failure", error=f"{where}: if: {exc}")
            self.logs.notice(outcome.error or "")
            self._record(step, outcome, False, state)
            return outcome
        if not should_run:
            reason = (
                "an earlier step failed" if state.status.failed and step.if_ is None else "its if: is false"
            )
            self.logs.notice(f"{where} skipped: {reason}")
            if step.id:
                state.steps[step.id] = {"outcome": "skipped", "conclusion": "skipped", "outputs": {}}
            return None
        remaining = state.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            outcome = StepOutcome(
                "failure", error=f"job '{state.name}' timed out after {state.minutes:g} minutes",
                timed_out=True, job_timed_out=True,
            )  # fmt: skip
            self.logs.notice(outcome.error or "")
            self._record(step, outcome, False, state)
            return outcome
        outcome = await self._execute_step(spec, step, evaluation, state, display, where, remaining)
        try:
            allowed = truthy(evaluate_value(step.continue_on_error, evaluation))
        except ExpressionError as exc:
            self.logs.notice(f"{where}: continue-on-error: {exc}")
            allowed = False
        if outcome.outcome == "failure" and allowed:
            self.logs.notice(f"{where} failed, but continue-on-error lets the job go on")
        self._record(step, outcome, allowed, state)
        return outcome

    def _record(self, step: Step, outcome: StepOutcome, allowed: bool, state: _InstanceState) -> None:
        conclusion = "success" if outcome.outcome == "failure" and allowed else outcome.outcome
        if step.id:
            state.steps[step.id] = {
                "outcome": outcome.outcome,
                "conclusion": conclusion,
                "outputs": outcome.outputs,
            }
        if conclusion == "failure":
            self.record_failure(outcome, state)

    @staticmethod
    def record_failure(outcome: StepOutcome, state: _InstanceState) -> None:
        """The job has failed; the run's error is its first failure's."""
        state.status.failed = True
        if state.failure is None:
            status = Status.TIMEOUT if outcome.timed_out else Status.FAILED
            state.failure = Failure(status, outcome.error or "a step failed", outcome.exit_code)

    async def _execute_step(
        self,
        spec: RunSpec,
        step: Step,
        evaluation: Evaluation,
        state: _InstanceState,
        display: str,
        where: str,
        remaining: float,
    ) -> StepOutcome:
        step_id = self.step_counter
        self.step_counter += 1
        command_text = step.run if step.run is not None else f"uses: {step.uses}"
        self.logs.control(display, step_id=step_id, step_status="start", step_command=command_text)
        if step.uses is not None and not checkout.is_checkout(step.uses):
            # Every other `uses:` is an action: fetched, placed in the container, run there.
            outcome = await self.actions.run_step(spec, step, evaluation, state, step_id=step_id, where=where)
        else:
            outcome = await self._run_workflow_step(spec, step, evaluation, state, step_id, where, remaining)
        self.logs.control(display, step_id=step_id, step_status="end", step_command=command_text)
        return outcome

    async def _run_workflow_step(
        self,
        spec: RunSpec,
        step: Step,
        evaluation: Evaluation,
        state: _InstanceState,
        step_id: int,
        where: str,
        remaining: float,
    ) -> StepOutcome:
        """A `run:` step or actions/checkout."""
        files = self.file_command_paths(state)
        try:
            request, plan, step_limit = self._prepare(spec, step, evaluation, state, files, remaining)
        except (StepError, ExpressionError, checkout.CheckoutError) as exc:
            self.logs.data(f"Error: {exc}", stream="stderr", step_id=step_id)
            return StepOutcome("failure", error=f"{where}: {exc}")
        return await self.execute(
            state, request, files, step_id=step_id, where=where, step_limit=step_limit,
            remaining=remaining, plan=plan,
        )  # fmt: skip

    def file_command_paths(self, state: _InstanceState) -> dict[str, str]:
        """Fresh GITHUB_ENV, GITHUB_OUTPUT ... files for one process (created empty by execute)."""
        self.file_counter += 1
        directory = state.workspace.file_commands
        return {name: f"{directory}/{name.lower()}_{self.file_counter}" for name in FILE_COMMANDS}

    async def execute(
        self,
        state: _InstanceState,
        request: _StepRequest,
        files: dict[str, str],
        *,
        step_id: int,
        where: str,
        step_limit: float | None,
        remaining: float,
        plan: checkout.CheckoutPlan | None = None,
        run: Callable[[OutputSink], Awaitable[ExecResult]] | None = None,
    ) -> StepOutcome:
        """One process of a step (a run: script, a checkout, an action's node script, or what
        `run` starts: a Docker action's container) to its outcome, its output logged under
        `step_id`; its GITHUB_ENV/PATH/OUTPUT take effect."""

        def output(stream: str, line: str) -> None:
            self.logs.data(line, stream=stream, step_id=step_id)

        try:
            uploads: dict[str, bytes] = {path: b"" for path in files.values()}
            if request.script is not None:
                uploads[request.script[0]] = request.script[1].encode("utf-8", errors="surrogateescape")
            await self.backend.put_files(state.job, uploads)
            if request.directory is not None and not await self._is_directory(state, request.exec.cwd):
                raise StepError(f"working-directory {request.directory!r} does not exist")
        except StepError as exc:
            self.logs.data(f"Error: {exc}", stream="stderr", step_id=step_id)
            return StepOutcome("failure", error=f"{where}: {exc}")
        if plan is not None:
            result = await self._checkout(plan, state, request.exec, output)
        elif run is not None:
            result = await run(output)
        else:
            result = await self.backend.exec(state.job, request.exec, output=output, cancel=state.cancel)
        if result.error and not result.limit:
            self.logs.data(f"Error: {result.error}", stream="stderr", step_id=step_id)
        outcome = StepOutcome("success", exit_code=result.exit_code)
        if result.limit:
            message = f"{where} failed: {result.limit}"
            self.logs.data(f"Error: {result.limit}", stream="stderr", step_id=step_id)
            outcome = StepOutcome("failure", error=message, exit_code=result.exit_code)
        elif result.cancelled:
            outcome = StepOutcome("cancelled", error=f"{where} was cancelled", exit_code=result.exit_code)
            self.logs.data("Error: the step was cancelled", stream="stderr", step_id=step_id)
        elif result.timed_out:
            step_bound = step_limit is not None and step_limit * 60 <= remaining
            message = (
                f"{where} timed out after {step_limit:g} minutes"
                if step_bound and step_limit is not None
                else f"job '{state.name}' timed out after {state.minutes:g} minutes"
            )
            self.logs.data(f"Error: {message}", stream="stderr", step_id=step_id)
            outcome = StepOutcome("failure", error=message, timed_out=True, job_timed_out=not step_bound)
        elif result.error:
            outcome = StepOutcome("failure", error=f"{where}: {result.error}")
        elif result.exit_code != 0:
            self.logs.data(
                f"Error: Process completed with exit code {result.exit_code}.",
                stream="stderr",
                step_id=step_id,
            )
            outcome = StepOutcome(
                "failure",
                error=f"{where} failed with exit code {result.exit_code}",
                exit_code=result.exit_code,
            )
        if not result.cancelled and not result.limit:
            try:
                await self._apply_file_commands(files, state, outcome, step_id)
            except StepError as exc:
                self.logs.data(f"Error: {exc}", stream="stderr", step_id=step_id)
                if outcome.outcome == "success":
                    outcome = StepOutcome("failure", error=f"{where}: {exc}", exit_code=result.exit_code)
            if state.job.limit_hit is not None and outcome.outcome == "success":
                # A limit the step survived still ends the job: the operator's limits are not advice.
                self.logs.data(f"Error: {state.job.limit_hit}", stream="stderr", step_id=step_id)
                outcome = StepOutcome(
                    "failure", error=f"{where} failed: {state.job.limit_hit}", exit_code=result.exit_code
                )
        return outcome

    def _prepare(
        self,
        spec: RunSpec,
        step: Step,
        evaluation: Evaluation,
        state: _InstanceState,
        files: dict[str, str],
        remaining: float,
    ) -> tuple[_StepRequest, checkout.CheckoutPlan | None, float | None]:
        """The process a step runs (with its script), the checkout it does, its own time limit."""
        workspace = state.workspace
        env, step_evaluation, _ = self.environment(
            state, files, evaluation, action=step.id or f"__run_{step.index}", step_env=step.env
        )
        step_limit = _minutes(step.timeout_minutes, step_evaluation, "timeout-minutes")
        timeout = min(remaining, step_limit * 60) if step_limit is not None else remaining

        if step.uses is not None:
            with_ = {k: evaluate_value(v, step_evaluation) for k, v in step.with_.items()}
            plan = checkout.plan_checkout(
                with_=with_,
                workspace=workspace.workspace,
                clone_url=spec.clone_url,
                sha=spec.sha,
                repository=spec.repository,
            )
            for note in plan.notes:
                self.logs.notice(note)
            # git in the container with the image's own PATH and no config or hooks: nothing an
            # earlier step planted (a `git` on GITHUB_PATH, ~/.gitconfig, .git/hooks) runs here.
            git_env = {
                "HOME": workspace.home,
                "PATH": state.job.env.get("PATH") or DEFAULT_PATH,
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": "/dev/null",
            }
            return _StepRequest(ExecRequest([], git_env, workspace.workspace, timeout)), plan, step_limit

        assert step.run is not None
        script = interpolate(step.run, step_evaluation)
        shell = step.shell or state.defaults.shell
        if shell is not None:
            shell = interpolate(shell, step_evaluation)
        template, extension = shell_command(shell, commands=state.job.commands)
        script_path = f"{workspace.temp}/{uuid.uuid4()}{extension}"
        directory = step.working_directory or state.defaults.working_directory
        cwd = workspace.workspace
        argv = [part.replace("{0}", script_path) for part in template]
        checked = None
        if directory:
            directory = interpolate(directory, step_evaluation)
            cwd = posixpath.normpath(posixpath.join(workspace.workspace, directory))
            checked = directory
        request = _StepRequest(ExecRequest(argv, env, cwd, timeout), (script_path, script), checked)
        return request, None, step_limit

    def environment(
        self,
        state: _InstanceState,
        files: dict[str, str],
        evaluation: Evaluation,
        *,
        action: str,
        step_env: Env,
        inherited: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, str], Evaluation, dict[str, str]]:
        """A process's variables (standard, file commands, workflow and job env, GITHUB_ENV, then
        `inherited` (a composite action's step env), then the step's own `env:`, evaluated), and
        the evaluation the step's other expressions see (its `env` context), and the step's own
        `env:` alone (what a composite action's steps inherit)."""
        env: dict[str, str] = {
            "HOME": state.workspace.home,
            "PATH": state.job.env.get("PATH") or DEFAULT_PATH,
        }
        env.update(state.standard)
        env.update(files)
        env["GITHUB_ACTION"] = action
        env.update(state.env)
        env.update(state.github_env)
        env.update(inherited or {})
        if state.path_entries:
            env["PATH"] = ":".join([*reversed(state.path_entries), env["PATH"]])
        step_ctx = dict(evaluation.contexts)
        step_ctx["env"] = {**state.env, **state.github_env, **(inherited or {})}
        own: dict[str, str] = {}
        if isinstance(step_env, EnvExpression):
            own = resolve_env(step_env, Evaluation(step_ctx, evaluation.status), "env")
            step_ctx["env"] = {**step_ctx["env"], **own}
        else:
            # Each variable sees the ones above it, as on GitHub.
            for key, value in step_env.items():
                own[key] = interpolate(
                    value, Evaluation(step_ctx, evaluation.status, hash_files=evaluation.hash_files)
                )
                step_ctx["env"] = {**step_ctx["env"], key: own[key]}
        env.update(own)
        return env, Evaluation(step_ctx, evaluation.status, hash_files=evaluation.hash_files), own

    async def _prime_hashes(self, step: Step, ctx: dict[str, Any], state: _InstanceState) -> None:
        """hashFiles() needs the job's files, which only an exec can read, while expressions are
        evaluated synchronously: a first pass over the step's expressions records the patterns
        asked for, they are hashed in the container, and the real evaluation reads the results."""
        asked: set[tuple[str, ...]] = set()

        def record(patterns: tuple[str, ...]) -> str:
            asked.add(patterns)
            return ""

        dry = Evaluation(ctx, state.status, hash_files=record)
        texts = [step.name, step.run, step.shell, step.working_directory, *env_texts(step.env)]
        for text in texts:
            if isinstance(text, str):
                with contextlib.suppress(ExpressionError):
                    interpolate(text, dry)
        with contextlib.suppress(ExpressionError):
            evaluate_condition(step.if_, dry)
        for value in (step.continue_on_error, step.timeout_minutes, *step.with_.values()):
            with contextlib.suppress(ExpressionError):
                evaluate_value(value, dry)
        for patterns in sorted(asked):
            state.hashes[patterns] = await self._hash_files(state, patterns)

    async def _hash_files(self, state: _InstanceState, patterns: tuple[str, ...]) -> str | ExpressionError:
        if "python3" not in state.job.commands:
            return ExpressionError("hashFiles() needs python3 in the job's image")
        lines: list[str] = []
        request = ExecRequest(
            ["python3", "-c", hashfiles.SCRIPT, *patterns], {}, state.workspace.workspace, HASH_FILES_TIMEOUT
        )

        def keep(stream: str, line: str) -> None:
            if stream == "stdout":
                lines.append(line)

        result = await self.backend.exec(state.job, request, output=keep, cancel=state.cancel)
        if result.exit_code != 0 or len(lines) != 1:
            return ExpressionError(
                f"hashFiles({', '.join(map(repr, patterns))}) failed in the job's container"
            )
        return lines[0].strip()

    async def _is_directory(self, state: _InstanceState, path: str) -> bool:
        """Whether `path` is a directory in the job's container (it is the job's to make)."""
        test = ExecRequest(["/bin/sh", "-c", 'test -d "$1"', "sh", path], {}, "/", 30)
        result = await self.backend.exec(
            state.job, test, output=lambda stream, line: None, cancel=state.cancel
        )
        return result.exit_code == 0

    async def _checkout(
        self, plan: checkout.CheckoutPlan, state: _InstanceState, request: ExecRequest, output: OutputSink
    ) -> ExecResult:
        """Fetch on the host, then the `.git` into the container and the files checked out there."""
        notes: list[str] = []
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(request.timeout):
                fetched = await self.fetcher.fetch(
                    url=plan.url, target=plan.target, depth=plan.depth, log=notes
                )
                for line in notes:
                    output("stdout", line)
                archive = self.scratch / f"git-{uuid.uuid4().hex}.tar"
                try:
                    if "git" in state.job.commands:
                        await asyncio.to_thread(
                            fetch.tar_git_dir, fetched.git_dir, into=plan.dest, out=archive
                        )
                    else:
                        output("stdout", "the job's image has no git: the files are copied without .git")
                        await fetch.archive_files(fetched, into=plan.dest, out=archive)
                    await self.backend.put_tar(state.job, archive)
                finally:
                    archive.unlink(missing_ok=True)
        except fetch.FetchError as exc:
            for line in notes:
                output("stdout", line)
            for line in str(exc).splitlines():
                output("stderr", line)
            return ExecResult(1)
        except TimeoutError:
            return ExecResult(None, timed_out=True)
        if "git" not in state.job.commands:
            return ExecResult(0)
        request.argv = ["/bin/sh", "-c", _PLACE, "checkout", plan.dest, fetched.commit]
        # The checkout in the container gets what the fetch left of the step's time.
        request.timeout = max(request.timeout - (asyncio.get_running_loop().time() - started), 1.0)
        return await self.backend.exec(state.job, request, output=output, cancel=state.cancel)

    async def _apply_file_commands(
        self, files: dict[str, str], state: _InstanceState, outcome: StepOutcome, step_id: int
    ) -> None:
        """What the step wrote to GITHUB_ENV / GITHUB_OUTPUT / GITHUB_PATH takes effect."""
        wanted = {
            name: files[name] for name in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_PATH", "GITHUB_STATE")
        }
        try:
            raw = await self.backend.read_files(state.job, wanted, limit=MAX_FILE_COMMAND_BYTES)
        except FileCommandError as exc:
            raise StepError(str(exc)) from None
        text = {name: data.decode("utf-8", errors="replace") for name, data in raw.items()}
        for name, value in parse_file_command(text["GITHUB_ENV"], "GITHUB_ENV").items():
            if PROTECTED_ENV.match(name):
                self.logs.notice(f"GITHUB_ENV cannot change {name}; ignored", step_id=step_id)
            elif "\0" in name or not name.strip():
                self.logs.notice(f"GITHUB_ENV: {name!r} is not a variable name; ignored", step_id=step_id)
            else:
                state.github_env[name] = value
        outcome.outputs.update(parse_file_command(text["GITHUB_OUTPUT"], "GITHUB_OUTPUT"))
        outcome.saved_state.update(parse_file_command(text["GITHUB_STATE"], "GITHUB_STATE"))
        for line in text["GITHUB_PATH"].splitlines():
            if line.strip():
                state.path_entries.append(line.strip())


@dataclass
class _StepRequest:
    exec: ExecRequest
    script: tuple[str, str] | None = None  # (path in the container, content)
    directory: str | None = None  # a working-directory as written, checked before the step runs


@dataclass
class _InstanceState:
    """What carries from one step of a job instance to the next."""

    name: str
    workspace: Workspace
    standard: dict[str, str]
    env: dict[str, str]  # workflow env + job env
    deadline: float
    minutes: float
    status: StepsStatus
    defaults: RunDefaults  # the job's `defaults.run`, else the workflow's
    job: EngineJob  # the job's container, in the backend
    cancel: asyncio.Event  # the run's cancel, or fail-fast stopping this matrix leg
    hashes: dict[tuple[str, ...], str | ExpressionError] = field(default_factory=dict)  # this step's

    def hash_of(self, patterns: tuple[str, ...]) -> str:
        """hashFiles() for the current step, from what _prime_hashes computed."""
        value = self.hashes.get(patterns)
        if value is None:
            raise ExpressionError("hashFiles() can only take patterns known before the step runs")
        if isinstance(value, ExpressionError):
            raise value
        return value

    github_env: dict[str, str] = field(default_factory=dict)
    path_entries: list[str] = field(default_factory=list)
    # A lambda: action_steps imports this module, so its names exist only once both are loaded.
    action_state: action_steps.JobActions = field(default_factory=lambda: action_steps.JobActions())
    steps: dict[str, Any] = field(default_factory=dict)
    failure: Failure | None = None
