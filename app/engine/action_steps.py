"""Steps that `uses:` an action: JavaScript (`node12|16|20|24`) and composite actions, fetched or
from the workspace (`./path`), run in the job's container.

    runner.actions = ActionSteps(runner, cache.resolver())   # one per run (refs resolve once)
    await actions.run_pre(job.steps, ctx, state)             # before the first step: every `pre`
    await actions.run_step(step, evaluation, state, ...)     # a step's action (its `main`)
    await actions.run_post(ctx, state)                       # after the last step: every `post`,
                                                             # last registered first

Where the files are: an action of a repository is fetched on the host (app/engine/actions: the
cache, never run there) and streamed into the container at `/__w/_actions/<owner>/<repo>/<ref>`
once per job; `./path` is read where a step put it, in the job's workspace (hostile: read through
the container, size-bounded, parsed by the same loader). A JavaScript action runs with the
image's own `node`; a composite action's steps run one after another in the same container, their
output in the log of the step that uses the action, each one announced on a line of its own.

Like GitHub's runner: `with:` and the action's defaults (expressions, evaluated) become INPUT_<NAME>;
GITHUB_STATE written by `pre` or `main` is STATE_<name> in the later stages; `pre-if` and `post-if`
default to always() and see the job's status at that point; a `post` is registered when its `main`
starts, so it runs even when `main` failed. A composite action's steps have their own `steps` and
status (success() is about the composite's steps), `inputs`, the using step's `env`, and nest up
to MAX_DEPTH actions deep.

A Docker action (`runs.using: docker`) or a `docker://image` step runs in a step container of the
backend (app/engine/actions/docker.py): its image prepared or built once per job, in the job
container's namespaces with the job's volumes, so the same paths and file commands work;
`pre-entrypoint` runs just before the main entrypoint, `post-entrypoint` with the posts at the end.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import tarfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine import checkout
from app.engine import runner as engine_runner  # a cycle: names are read when called, not at import
from app.engine.actions import (
    ActionDefinition,
    ActionError,
    CompositeRuns,
    DockerRuns,
    FetchedAction,
    InvalidDefinition,
    MissingDefinition,
    NodeRuns,
    RunResolver,
    parse_definition,
)
from app.engine.actions import docker as docker_actions
from app.engine.backend import ExecRequest, ExecResult, FileCommandError, OutputSink, StepImageError
from app.workflows.exceptions import WorkflowError
from app.workflows.expressions import (
    Evaluation,
    ExpressionError,
    evaluate_condition,
    evaluate_value,
    interpolate,
    to_string,
    truthy,
)
from app.workflows.jobs import Scalar, Step, parse_step
from app.workflows.loader import MAX_SOURCE_BYTES
from app.workflows.uses import DockerImage, LocalAction, RepositoryAction, Uses

if TYPE_CHECKING:
    from app.engine.context import RunSpec
    from app.engine.runner import StepOutcome, WorkflowRunner, _InstanceState

ACTIONS_ROOT = "/__w/_actions"
MAX_DEPTH = 10  # composite actions inside composite actions
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def local_docker_build_unsupported(name: str) -> str:
    """Why a Docker action of the workspace whose image is a Dockerfile cannot run here."""
    return (
        f"the action {name!r} is a Docker action of the workspace built from a Dockerfile, which this "
        "spindle does not build (Docker actions fetched from a repository, and docker:// images, run)"
    )


@dataclass(frozen=True)
class LoadedAction:
    """An action ready to run in one job: its definition and where its files are in the container."""

    name: str  # the reference as written
    definition: ActionDefinition
    path: str  # GITHUB_ACTION_PATH
    repository: str  # GITHUB_ACTION_REPOSITORY: owner/repo; "" for an action of the workspace
    ref: str  # GITHUB_ACTION_REF
    host_directory: Path | None = None  # the action's files on the host (fetched ones): a build context

    def env(self) -> dict[str, str]:
        return {
            "GITHUB_ACTION_PATH": self.path,
            "GITHUB_ACTION_REPOSITORY": self.repository,
            "GITHUB_ACTION_REF": self.ref,
        }


@dataclass
class _Post:
    action: LoadedAction
    runs: NodeRuns | DockerRuns
    label: str  # the step's display name
    env: dict[str, str]  # the main stage's variables (its inputs included)
    saved_state: dict[str, str]
    docker: docker_actions.DockerActionRun | None = None  # a Docker action's run, for its post-entrypoint


@dataclass
class JobActions:
    """What one job instance keeps about its actions."""

    placed: dict[str, str] = field(default_factory=dict)  # directory in the container → commit
    pre_state: dict[int, dict[str, str]] = field(default_factory=dict)  # step index → GITHUB_STATE
    posts: list[_Post] = field(default_factory=list)


def input_variable(name: str) -> str:
    """INPUT_<NAME>: upper case, spaces as underscores (GitHub's @actions/core reads it so)."""
    return "INPUT_" + name.replace(" ", "_").upper()


def tar_action(directory: Path, *, into: str, out: Path) -> Path:
    """A tar of an action repository's files landing at `into`; links stay links (never followed)."""
    with tarfile.open(out, "w") as archive:
        archive.add(directory, arcname=into.strip("/"), recursive=True)
    return out


class ActionSteps:
    """The action steps of one run; `runner` is the WorkflowRunner that runs their processes."""

    def __init__(self, runner: WorkflowRunner, resolver: RunResolver) -> None:
        self.runner = runner
        self.resolver = resolver
        # One fetch per reference per run, failures included: every job of the run sees the same.
        self._fetched: dict[str, FetchedAction | ActionError] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    def close(self) -> None:
        """The run is over: the cache may evict what it fetched."""
        self.resolver.close()

    # -- pre, main, post -------------------------------------------------------------------------

    async def run_pre(self, steps: tuple[Step, ...], ctx: dict[str, Any], state: _InstanceState) -> None:
        """Fetch every action of the job's steps (a failure fails its step later) and run their
        `pre`, each as a step of the log; a failing `pre` fails the job."""
        for step in steps:
            uses = step.uses
            if not isinstance(uses, RepositoryAction) or checkout.is_checkout(uses):
                continue
            if state.cancel.is_set():
                return
            try:
                async with asyncio.timeout(max(state.deadline - asyncio.get_running_loop().time(), 0.0)):
                    action = await self._load(uses, state)
            except (ActionError, TimeoutError):
                continue  # the step says why when it comes
            runs = action.definition.runs
            if not isinstance(runs, NodeRuns) or runs.pre is None:
                continue
            ctx["steps"] = state.steps
            ctx["job"] = {**ctx["job"], "status": "failure" if state.status.failed else "success"}
            evaluation = Evaluation(ctx, state.status)
            label = f"Pre {self._label(step, evaluation)}"
            where = f"step '{label}' of job '{state.name}'"
            outcome = await self._stage(
                action, runs, "pre", label=label, where=where, condition=runs.pre_if, state=state,
                evaluation=evaluation, step=step, saved_state={},
            )  # fmt: skip
            if outcome is not None:
                state.action_state.pre_state[step.index] = outcome.saved_state

    async def run_step(
        self,
        spec: RunSpec,
        step: Step,
        evaluation: Evaluation,
        state: _InstanceState,
        *,
        step_id: int,
        where: str,
    ) -> StepOutcome:
        """The action a workflow step uses, run to its outcome (its output logged under step_id)."""
        assert step.uses is not None
        try:
            env, step_evaluation, own = self.runner.environment(
                state, {}, evaluation, action=step.id or _action_id(step.uses), step_env=step.env
            )
            step_limit = engine_runner._minutes(step.timeout_minutes, step_evaluation, "timeout-minutes")
        except (engine_runner.StepError, ExpressionError) as exc:
            return self._fail(where, str(exc), step_id)
        display = self._label(step, evaluation)
        return await self._run_action(
            spec, step.uses, step.with_, step_evaluation, env=env, inherited=own, state=state,
            step_id=step_id, where=where, display=display, step_limit=step_limit, depth=0,
            saved_state=state.action_state.pre_state.get(step.index, {}),
        )  # fmt: skip

    async def run_post(self, ctx: dict[str, Any], state: _InstanceState) -> None:
        """The `post` of every JavaScript action whose main started, last first."""
        posts, state.action_state.posts = state.action_state.posts, []
        for post in reversed(posts):
            if state.cancel.is_set():
                return  # after a cancel nothing more runs, always() included
            ctx["steps"] = state.steps
            ctx["job"] = {**ctx["job"], "status": "failure" if state.status.failed else "success"}
            label = f"Post {post.label}"
            where = f"step '{label}' of job '{state.name}'"
            await self._stage(
                post.action, post.runs, "post", label=label, where=where, condition=post.runs.post_if,
                state=state, evaluation=Evaluation(ctx, state.status), env=post.env,
                saved_state=post.saved_state, post=post,
            )  # fmt: skip

    async def _stage(
        self,
        action: LoadedAction,
        runs: NodeRuns | DockerRuns,
        stage: str,
        *,
        label: str,
        where: str,
        condition: str | None,
        state: _InstanceState,
        evaluation: Evaluation,
        saved_state: dict[str, str],
        step: Step | None = None,
        env: dict[str, str] | None = None,
        post: _Post | None = None,
    ) -> StepOutcome | None:
        """A `pre` or `post` as a step of its own in the log; None when its condition is false."""
        try:
            # GitHub's default for both is always(): they clean up after failures too.
            should_run = evaluate_condition(condition or "always()", evaluation)
        except ExpressionError as exc:
            outcome = engine_runner.StepOutcome("failure", error=f"{where}: {stage}-if: {exc}")
            self.runner.logs.notice(outcome.error or "")
            self.runner.record_failure(outcome, state)
            return outcome
        if not should_run:
            self.runner.logs.notice(f"{where} skipped: its {stage}-if is false")
            return None
        if state.deadline - asyncio.get_running_loop().time() <= 0:
            self.runner.logs.notice(f"{where} not run: the job's time is up")
            return None
        step_id = self.runner.step_counter
        self.runner.step_counter += 1
        command = f"{stage}: {action.name}"
        self.runner.logs.control(label, step_id=step_id, step_status="start", step_command=command)
        if post is not None and post.docker is not None:
            outcome = await self._run_docker_post(post, state=state, step_id=step_id, where=where)
        elif env is None:
            assert step is not None and isinstance(runs, NodeRuns)
            outcome = await self._pre_env_and_run(action, runs, step, evaluation, state, step_id, where)
        else:
            assert isinstance(runs, NodeRuns)
            outcome = await self._run_node(
                action, runs, stage, env=env, state=state, step_id=step_id, where=where,
                step_limit=None, saved_state=saved_state,
            )  # fmt: skip
        self.runner.logs.control(label, step_id=step_id, step_status="end", step_command=command)
        if outcome.outcome == "failure":
            self.runner.record_failure(outcome, state)
        return outcome

    async def _pre_env_and_run(
        self,
        action: LoadedAction,
        runs: NodeRuns,
        step: Step,
        evaluation: Evaluation,
        state: _InstanceState,
        step_id: int,
        where: str,
    ) -> StepOutcome:
        """`pre` sees the step's env and inputs as they evaluate before the first step."""
        assert step.uses is not None
        try:
            env, step_evaluation, _ = self.runner.environment(
                state, {}, evaluation, action=step.id or _action_id(step.uses), step_env=step.env
            )
            inputs = self._inputs(action, step.with_, step_evaluation, step_id)
            env.update({input_variable(name): value for name, value in inputs.items()})
        except (engine_runner.StepError, ExpressionError) as exc:
            return self._fail(where, str(exc), step_id)
        return await self._run_node(
            action, runs, "pre", env=env, state=state, step_id=step_id, where=where, step_limit=None,
            saved_state={},
        )  # fmt: skip

    # -- one action ------------------------------------------------------------------------------

    async def _run_action(
        self,
        spec: RunSpec,
        uses: Uses,
        with_: Mapping[str, Scalar],
        evaluation: Evaluation,
        *,
        env: dict[str, str],
        inherited: dict[str, str],
        state: _InstanceState,
        step_id: int,
        where: str,
        display: str,
        step_limit: float | None,
        depth: int,
        saved_state: dict[str, str],
    ) -> StepOutcome:
        """Fetch or read the action, then run it as its `runs.using` says."""
        if isinstance(uses, DockerImage):
            return await self._run_docker(
                None, None, with_, evaluation, env=env, state=state, step_id=step_id, where=where,
                display=display, step_limit=step_limit, image=str(uses),
            )  # fmt: skip
        try:
            # A fetch counts against the job's time, as a checkout's does.
            async with asyncio.timeout(max(state.deadline - asyncio.get_running_loop().time(), 0.0)):
                action = await self._load(uses, state)
        except ActionError as exc:
            return self._fail(where, str(exc), step_id)
        except TimeoutError:
            message = f"job '{state.name}' timed out after {state.minutes:g} minutes"
            self.runner.logs.data(f"Error: {message}", stream="stderr", step_id=step_id)
            return engine_runner.StepOutcome("failure", error=message, timed_out=True, job_timed_out=True)
        runs = action.definition.runs
        try:
            inputs = self._inputs(action, with_, evaluation, step_id)
        except ExpressionError as exc:
            return self._fail(where, str(exc), step_id)
        if isinstance(runs, DockerRuns):
            # runs.args and runs.env read the action's inputs, as on GitHub.
            action_evaluation = Evaluation(
                {**evaluation.contexts, "inputs": inputs}, evaluation.status, hash_files=evaluation.hash_files
            )
            return await self._run_docker(
                action, runs, with_, evaluation, action_evaluation=action_evaluation,
                env={**env, **{input_variable(name): value for name, value in inputs.items()}},
                state=state, step_id=step_id, where=where, display=display, step_limit=step_limit,
            )  # fmt: skip
        if isinstance(runs, CompositeRuns):
            return await self._run_composite(
                spec, action, runs, inputs, evaluation, inherited=inherited, state=state, step_id=step_id,
                where=where, depth=depth,
            )  # fmt: skip
        stage_env = {**env, **{input_variable(name): value for name, value in inputs.items()}}
        if runs.post is not None:
            # Registered before main runs, as GitHub does: a failed main is cleaned up after too.
            post = _Post(action, runs, display, stage_env, dict(saved_state))
            state.action_state.posts.append(post)
        outcome = await self._run_node(
            action, runs, "main", env=stage_env, state=state, step_id=step_id, where=where,
            step_limit=step_limit, saved_state=saved_state,
        )  # fmt: skip
        if runs.post is not None:
            post.saved_state.update(outcome.saved_state)
        return outcome

    async def _run_docker(
        self,
        action: LoadedAction | None,
        runs: DockerRuns | None,
        with_: Mapping[str, Scalar],
        evaluation: Evaluation,
        *,
        env: dict[str, str],
        state: _InstanceState,
        step_id: int,
        where: str,
        display: str,
        step_limit: float | None,
        image: str | None = None,
        action_evaluation: Evaluation | None = None,
    ) -> StepOutcome:
        """A Docker action (`runs`, its files on the host for a build) or a `docker://image` step
        (`image`), in a step container: the image prepared or built first, in the step's log.
        `with:` is evaluated in the step's `evaluation`; runs.args and runs.env in
        `action_evaluation` (with the action's `inputs`)."""
        name = action.name if action is not None else image or ""
        if runs is not None and not runs.image.startswith(docker_actions.DOCKER_PREFIX):
            if action is None or action.host_directory is None:
                return self._fail(where, local_docker_build_unsupported(name), step_id)
        try:
            with_args = with_.get("args")
            with_entrypoint = with_.get("entrypoint")
            args = to_string(evaluate_value(with_args, evaluation)) if with_args is not None else None
            entrypoint = (
                to_string(evaluate_value(with_entrypoint, evaluation))
                if with_entrypoint is not None
                else None
            )
        except ExpressionError as exc:
            return self._fail(where, str(exc), step_id)
        files = self.runner.file_command_paths(state)
        process_env = {**env, **files, **(action.env() if action is not None else {})}
        remaining = state.deadline - asyncio.get_running_loop().time()
        timeout = min(remaining, step_limit * 60) if step_limit is not None else remaining
        cwd = state.workspace.workspace

        def interpolated(text: str) -> str:
            return to_string(interpolate(text, action_evaluation or evaluation))

        async def start(output: OutputSink) -> ExecResult:
            try:
                ran = await docker_actions.run_docker_action(
                    backend=self.runner.backend, job=state.job, runs=runs, image=image,
                    action_dir=action.host_directory if action is not None else None, env=process_env,
                    cwd=cwd, timeout=timeout, output=output, cancel=state.cancel,
                    progress=lambda line: output("stdout", line), with_args=args,
                    with_entrypoint=entrypoint, interpolate=interpolated,
                )  # fmt: skip
            except (StepImageError, ExpressionError) as exc:
                return ExecResult(None, error=str(exc))
            if ran.post is not None and action is not None and runs is not None:
                posts.append(_Post(action, runs, display, process_env, {}, docker=ran))
                state.action_state.posts.append(posts[-1])
            return ran.result

        posts: list[_Post] = []
        request = engine_runner._StepRequest(ExecRequest([], process_env, cwd, timeout))
        outcome = await self.runner.execute(
            state, request, files, step_id=step_id, where=where, step_limit=step_limit,
            remaining=remaining, run=start,
        )  # fmt: skip
        for post in posts:
            post.saved_state.update(outcome.saved_state)
        return outcome

    async def _run_docker_post(
        self, post: _Post, *, state: _InstanceState, step_id: int, where: str
    ) -> StepOutcome:
        """A Docker action's post-entrypoint, with STATE_* from what its main wrote."""
        assert post.docker is not None
        run = post.docker
        files = self.runner.file_command_paths(state)
        env = {**post.env, **files, **{f"STATE_{k}": v for k, v in post.saved_state.items()}}
        remaining = state.deadline - asyncio.get_running_loop().time()

        async def start(output: OutputSink) -> ExecResult:
            result = await docker_actions.run_post(
                self.runner.backend, state.job, run, env=env, timeout=remaining, output=output,
                cancel=state.cancel,
            )  # fmt: skip
            return result if result is not None else ExecResult(0)

        request = engine_runner._StepRequest(ExecRequest([], env, state.workspace.workspace, remaining))
        return await self.runner.execute(
            state, request, files, step_id=step_id, where=where, step_limit=None, remaining=remaining,
            run=start,
        )  # fmt: skip

    async def _run_node(
        self,
        action: LoadedAction,
        runs: NodeRuns,
        stage: str,
        *,
        env: dict[str, str],
        state: _InstanceState,
        step_id: int,
        where: str,
        step_limit: float | None,
        saved_state: Mapping[str, str],
    ) -> StepOutcome:
        """One stage (pre, main, post) of a JavaScript action: `node <script>` in the container."""
        if "node" not in state.job.commands:
            return self._fail(
                where,
                f"the job's image {state.job.spec.image} has no node, which the action "
                f"{action.name} (runs.using: {runs.using}) needs: use an image with Node.js "
                "(the default runner image has it)",
                step_id,
            )
        entry = {"pre": runs.pre, "main": runs.main, "post": runs.post}[stage]
        assert entry is not None
        script = posixpath.normpath(posixpath.join(action.path, entry))
        files = self.runner.file_command_paths(state)
        process_env = {**env, **files, **action.env()}
        process_env.update({f"STATE_{name}": value for name, value in saved_state.items()})
        remaining = state.deadline - asyncio.get_running_loop().time()
        timeout = min(remaining, step_limit * 60) if step_limit is not None else remaining
        request = engine_runner._StepRequest(
            ExecRequest(["node", script], process_env, state.workspace.workspace, timeout)
        )
        return await self.runner.execute(
            state, request, files, step_id=step_id, where=where, step_limit=step_limit, remaining=remaining
        )

    async def _run_composite(
        self,
        spec: RunSpec,
        action: LoadedAction,
        runs: CompositeRuns,
        inputs: dict[str, str],
        evaluation: Evaluation,
        *,
        inherited: dict[str, str],
        state: _InstanceState,
        step_id: int,
        where: str,
        depth: int,
    ) -> StepOutcome:
        """The composite's steps in order, in the same container; its outputs from its steps'."""
        if depth >= MAX_DEPTH:
            return self._fail(
                where,
                f"the action {action.name} is nested {depth + 1} composite actions deep; "
                f"at most {MAX_DEPTH} are allowed",
                step_id,
            )
        try:
            steps = [
                parse_step(raw, index, f"{action.definition.file}: runs.steps[{index}]")
                for index, raw in enumerate(runs.steps)
            ]
        except WorkflowError as exc:
            return self._fail(where, f"action {action.name}: {exc}", step_id)
        ctx = dict(evaluation.contexts)
        ctx["inputs"] = inputs
        ctx["steps"] = {}
        ctx["github"] = {
            **ctx.get("github", {}),
            "action_path": action.path,
            "action_repository": action.repository,
            "action_ref": action.ref,
        }
        status = engine_runner.StepsStatus(state.cancel)
        first_failure: StepOutcome | None = None
        for nested in steps:
            if state.cancel.is_set():
                return engine_runner.StepOutcome("cancelled", error=f"{where} was cancelled")
            state.hashes = {}
            if engine_runner._calls_hash_files(nested):
                await self.runner._prime_hashes(nested, ctx, state)
            nested_evaluation = Evaluation(ctx, status, hash_files=state.hash_of)
            try:
                display = (
                    interpolate(nested.name, nested_evaluation)
                    if nested.name
                    else engine_runner._step_label(nested)
                )
            except ExpressionError:
                display = nested.name or engine_runner._step_label(nested)
            nested_where = f"{where}, {action.name} step '{display}'"
            try:
                should_run = evaluate_condition(nested.if_, nested_evaluation)
            except ExpressionError as exc:
                should_run, outcome = False, self._fail(nested_where, f"if: {exc}", step_id)
                status.failed = True
                first_failure = first_failure or outcome
                continue
            if not should_run:
                self.runner.logs.notice(f"{action.name}: {display} skipped", step_id=step_id)
                if nested.id:
                    ctx["steps"][nested.id] = {"outcome": "skipped", "conclusion": "skipped", "outputs": {}}
                continue
            self.runner.logs.notice(f"{action.name}: {display}", step_id=step_id)
            outcome = await self._run_nested(
                spec, action, nested, nested_evaluation, inherited=inherited, state=state, step_id=step_id,
                where=nested_where, display=display, depth=depth,
            )  # fmt: skip
            try:
                allowed = truthy(evaluate_value(nested.continue_on_error, nested_evaluation))
            except ExpressionError:
                allowed = False
            conclusion = "success" if outcome.outcome == "failure" and allowed else outcome.outcome
            if nested.id:
                ctx["steps"][nested.id] = {
                    "outcome": outcome.outcome,
                    "conclusion": conclusion,
                    "outputs": outcome.outputs,
                }
            if outcome.outcome == "cancelled" or outcome.job_timed_out:
                return outcome
            if conclusion == "failure":
                status.failed = True
                first_failure = first_failure or outcome
        outputs: dict[str, str] = {}
        for name, output in action.definition.outputs.items():
            try:
                outputs[name] = interpolate(output.value or "", Evaluation(ctx, status))
            except ExpressionError as exc:
                self.runner.logs.notice(f"{action.name}: outputs.{name}: {exc}", step_id=step_id)
        if first_failure is not None:
            return engine_runner.StepOutcome(
                "failure",
                error=first_failure.error,
                exit_code=first_failure.exit_code,
                timed_out=first_failure.timed_out,
                outputs=outputs,
            )
        return engine_runner.StepOutcome("success", outputs=outputs)

    async def _run_nested(
        self,
        spec: RunSpec,
        action: LoadedAction,
        step: Step,
        evaluation: Evaluation,
        *,
        inherited: dict[str, str],
        state: _InstanceState,
        step_id: int,
        where: str,
        display: str,
        depth: int,
    ) -> StepOutcome:
        """One step of a composite action: a `run:` with its required `shell`, or another action."""
        try:
            env, step_evaluation, own = self.runner.environment(
                state, {}, evaluation, action=step.id or f"__{_UNSAFE.sub('_', action.name)}",
                step_env=step.env, inherited=inherited,
            )  # fmt: skip
            step_limit = engine_runner._minutes(step.timeout_minutes, step_evaluation, "timeout-minutes")
            if step.uses is not None:
                if checkout.is_checkout(step.uses):
                    # The same checkout as a workflow's step: the run's commit, from the knot.
                    remaining = state.deadline - asyncio.get_running_loop().time()
                    return await self.runner._run_workflow_step(
                        spec, step, evaluation, state, step_id, where, remaining
                    )
                return await self._run_action(
                    spec, step.uses, step.with_, step_evaluation, env=env, inherited={**inherited, **own},
                    state=state, step_id=step_id, where=where, display=display, step_limit=step_limit,
                    depth=depth + 1, saved_state={},
                )  # fmt: skip
            assert step.run is not None
            if step.shell is None:
                raise engine_runner.StepError(
                    "a run step of a composite action must name its shell (as on GitHub)"
                )
            template, extension = engine_runner.shell_command(
                interpolate(step.shell, step_evaluation), commands=state.job.commands
            )
            script = interpolate(step.run, step_evaluation)
            cwd, checked = state.workspace.workspace, None
            if step.working_directory:
                checked = interpolate(step.working_directory, step_evaluation)
                cwd = posixpath.normpath(posixpath.join(state.workspace.workspace, checked))
        except (engine_runner.StepError, ExpressionError) as exc:
            return self._fail(where, str(exc), step_id)
        files = self.runner.file_command_paths(state)
        script_path = f"{state.workspace.temp}/{uuid.uuid4()}{extension}"
        argv = [part.replace("{0}", script_path) for part in template]
        remaining = state.deadline - asyncio.get_running_loop().time()
        timeout = min(remaining, step_limit * 60) if step_limit is not None else remaining
        request = engine_runner._StepRequest(
            ExecRequest(argv, {**env, **files, **action.env()}, cwd, timeout), (script_path, script), checked
        )
        return await self.runner.execute(
            state, request, files, step_id=step_id, where=where, step_limit=step_limit, remaining=remaining
        )

    # -- where an action comes from --------------------------------------------------------------

    async def _load(self, uses: RepositoryAction | LocalAction, state: _InstanceState) -> LoadedAction:
        """The action's definition, its files in the job's container."""
        if isinstance(uses, LocalAction):
            return await self._load_local(uses, state)
        fetched = await self._fetch(uses)
        directory = await self._place(fetched, state)
        path = posixpath.join(directory, uses.path) if uses.path else directory
        return LoadedAction(
            uses.text,
            fetched.definition,
            path,
            f"{uses.owner}/{uses.repo}",
            uses.ref,
            host_directory=fetched.action_directory,
        )

    async def _fetch(self, uses: RepositoryAction) -> FetchedAction:
        lock = self._fetching.setdefault(uses.text, asyncio.Lock())
        async with lock:
            if uses.text not in self._fetched:
                try:
                    fetched = await self.resolver.fetch(uses)
                    self.runner.logs.notice(
                        f"action {uses.text} is {fetched.url} at {fetched.commit}"
                        f" ({fetched.definition.using})"
                    )
                    self._fetched[uses.text] = fetched
                except ActionError as exc:
                    self._fetched[uses.text] = exc
        found = self._fetched[uses.text]
        if isinstance(found, ActionError):
            raise found
        return found

    async def _place(self, fetched: FetchedAction, state: _InstanceState) -> str:
        """The action repository's files in the job's container (once per job); their directory."""
        uses = fetched.uses
        directory = "/".join(
            [
                ACTIONS_ROOT,
                *(_UNSAFE.sub("-", part).strip(".") or "_" for part in (uses.owner, uses.repo, uses.ref)),
            ]
        )
        placed = state.action_state.placed
        if placed.get(directory, fetched.commit) != fetched.commit:
            directory = f"{directory}-{fetched.commit[:12]}"  # same name, another server or commit
        if directory in placed:
            return directory
        archive = self.runner.scratch / f"action-{uuid.uuid4().hex}.tar"
        await asyncio.to_thread(archive.parent.mkdir, parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(tar_action, fetched.directory, into=directory, out=archive)
            await self.runner.backend.put_tar(state.job, archive)
        finally:
            await asyncio.to_thread(archive.unlink, True)
        placed[directory] = fetched.commit
        return directory

    async def _load_local(self, uses: LocalAction, state: _InstanceState) -> LoadedAction:
        """`./path`: action.yml read from the workspace through the container, as hostile text."""
        workspace = state.workspace.workspace
        directory = posixpath.join(workspace, uses.path) if uses.path else workspace
        names = ("action.yml", "action.yaml", "Dockerfile")
        try:
            found = await self.runner.backend.read_files(
                state.job, {name: f"{directory}/{name}" for name in names}, limit=MAX_SOURCE_BYTES
            )
        except FileCommandError as exc:
            raise InvalidDefinition(uses.text, str(exc)) from None
        prefix = f"{uses.path}/" if uses.path else ""
        for name in names[:2]:
            if found[name]:
                try:
                    source = found[name].decode("utf-8-sig")
                except UnicodeDecodeError:
                    raise InvalidDefinition(uses.text, f"{prefix}{name} is not UTF-8 text") from None
                definition = parse_definition(source, action=uses.text, file=f"{prefix}{name}")
                return LoadedAction(uses.text, definition, directory, "", "")
        if found["Dockerfile"]:
            definition = ActionDefinition(name=uses.text, runs=DockerRuns(image="Dockerfile"))
            return LoadedAction(uses.text, definition, directory, "", "")
        raise MissingDefinition(
            uses.text,
            f"there is no action.yml or action.yaml in {directory} (an action of the workspace is "
            "there once a step, such as actions/checkout, has put it there)",
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _inputs(
        self, action: LoadedAction, with_: Mapping[str, Scalar], evaluation: Evaluation, step_id: int
    ) -> dict[str, str]:
        """`with:` evaluated, plus the action's defaults for the inputs it leaves out (expressions
        too); unknown, missing required and deprecated inputs are noted in the log."""
        given = {str(k): to_string(evaluate_value(v, evaluation)) for k, v in with_.items()}
        lowered = {name.lower(): name for name in given}
        values: dict[str, str] = {}
        for name, spec in action.definition.inputs.items():
            key = lowered.get(name.lower())
            if key is not None:
                values[name] = given[key]
                if spec.deprecation_message:
                    self.runner.logs.notice(
                        f"{action.name}: input {name!r} is deprecated: {spec.deprecation_message}",
                        step_id=step_id,
                    )
            elif spec.default is not None:
                values[name] = to_string(interpolate(spec.default, evaluation))
            else:
                values[name] = ""
                if spec.required:
                    self.runner.logs.notice(
                        f"{action.name}: input {name!r} is required and was not given", step_id=step_id
                    )
        known = {name.lower() for name in action.definition.inputs}
        unexpected = [name for name in given if name.lower() not in known]
        if unexpected:
            self.runner.logs.notice(
                f"{action.name}: unexpected input(s) {', '.join(map(repr, unexpected))}; valid inputs are "
                f"{', '.join(map(repr, action.definition.inputs)) or 'none'}",
                step_id=step_id,
            )
            values.update({name: given[name] for name in unexpected})
        return values

    def _fail(self, where: str, problem: str, step_id: int) -> StepOutcome:
        """The step fails: the problem in its log, `where: problem` as the run's error."""
        self.runner.logs.data(f"Error: {problem}", stream="stderr", step_id=step_id)
        return engine_runner.StepOutcome("failure", error=f"{where}: {problem}")

    @staticmethod
    def _label(step: Step, evaluation: Evaluation) -> str:

        try:
            return interpolate(step.name, evaluation) if step.name else engine_runner._step_label(step)
        except ExpressionError:
            return step.name or engine_runner._step_label(step)


def _action_id(uses: Uses) -> str:
    """GITHUB_ACTION of a step without an id: `__owner_repo`, as GitHub names it."""
    if isinstance(uses, RepositoryAction):
        return f"__{uses.owner}_{uses.repo}"
    return "__" + _UNSAFE.sub("_", str(uses)).strip("_")
