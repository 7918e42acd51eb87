"""Docker actions (`runs.using: docker`) and `docker://image` steps, on a backend's step containers.

    run = await run_docker_action(
        backend=backend, job=job, runs=definition.runs, action_dir=fetched.action_directory,
        env=step_env, with_args=step.with_.get("args"), with_entrypoint=step.with_.get("entrypoint"),
        cwd=workspace, timeout=remaining, output=sink, cancel=cancel, progress=say,
    )
    run.result                     # ExecResult of the step: pre-entrypoint's if it failed, else main's
    ...                            # at the end of the job, if run.post is not None (and post-if holds):
    await run_post(backend, job, run, env=env, timeout=..., output=sink, cancel=cancel)

GitHub's semantics, as its runner and act have them:
- the image: `runs.image` is `docker://<image>` (local, else pulled) or a Dockerfile's path in the
  action's directory, built with that Dockerfile's directory as the build context (once per job
  and content: the backend keys built images by the context's digest); a `docker://` step is the
  same with `runs` None and `image` given;
- arguments: the step's `with.args` (a string, split as a shell would) when not empty, else
  `runs.args`, each interpolated by the runner's `interpolate`; none: the image's CMD;
- entrypoint: the step's `with.entrypoint` when given, else `runs.entrypoint`; none: the image's
  ENTRYPOINT. `pre-entrypoint` and `post-entrypoint` replace it, with the same arguments;
- environment: the step's (INPUT_*, GITHUB_*, the job's env: the runner's) with `runs.env` over
  it (interpolated);
- the container starts in `cwd` (the workspace) and sees the job's /__w and /github at the same
  paths, so GITHUB_OUTPUT, GITHUB_ENV, GITHUB_STATE and the rest are the files the runner reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.engine.actions.definition import DockerRuns
from app.engine.backend import (
    Backend,
    ContainerStep,
    ExecResult,
    Job,
    OutputSink,
    Progress,
    StepImageError,
)

DOCKER_PREFIX = "docker://"


@dataclass(frozen=True)
class DockerActionRun:
    result: ExecResult  # the step's: pre-entrypoint's when it failed, else main's
    image: str  # what ran
    post: ContainerStep | None  # post-entrypoint, for the end of the job; None when there is none
    runs_env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # runs.env, interpolated


def split_args(text: str) -> list[str]:
    """`with.args` as a shell splits it (`a "b c"` → [a, b c]); an unbalanced quote splits on spaces."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def docker_image_ref(uses: str) -> str:
    """`docker://alpine:3` → `alpine:3`; StepImageError for an empty or malformed reference."""
    from app.engine.container.images import IMAGE_REF_RE

    ref = uses.removeprefix(DOCKER_PREFIX).strip()
    if not ref or not (IMAGE_REF_RE.match(ref) or _is_digest_ref(ref)):
        raise StepImageError(f"{uses!r} does not name an image (docker://name[:tag])")
    return ref


def _is_digest_ref(ref: str) -> bool:
    """name@sha256:<64 hex>"""
    from app.engine.container.images import IMAGE_REF_RE

    name, at, digest = ref.partition("@")
    return bool(at and IMAGE_REF_RE.match(name) and digest.startswith("sha256:") and len(digest) == 71)


async def prepare_image(
    *,
    backend: Backend,
    job: Job,
    runs: DockerRuns | None,
    image: str | None,
    action_dir: Path | None,
    progress: Progress,
) -> str:
    """The image a Docker action or `docker://` step runs: prepared or built (see the module)."""
    source = runs.image if runs is not None else image
    if not source:
        raise StepImageError("the step names no image")
    if source.startswith(DOCKER_PREFIX):
        return await backend.prepare_step_image(job, docker_image_ref(source), progress=progress)
    if action_dir is None:
        raise StepImageError(f"the action's {source} cannot be built: the action has no directory")
    context, dockerfile = _build_context(action_dir, source)
    return await backend.build_action_image(job, context, dockerfile, progress=progress)


def _build_context(action_dir: Path, image: str) -> tuple[Path, str]:
    """(the Dockerfile's directory, its name); never a directory outside the action's."""
    path = PurePosixPath(image)
    if path.is_absolute() or ".." in path.parts or not path.name:
        raise StepImageError(f"runs.image {image!r} is not a path inside the action's directory")
    root = Path(os.path.realpath(action_dir))
    context = Path(os.path.realpath(root / path.parent))
    if not context.is_relative_to(root):
        raise StepImageError(f"runs.image {image!r} leads out of the action's directory")
    return context, path.name


def _entrypoint(text: str | None) -> list[str] | None:
    if text is None or not text.strip():
        return None
    return split_args(text)


async def run_docker_action(
    *,
    backend: Backend,
    job: Job,
    runs: DockerRuns | None,
    env: Mapping[str, str],
    cwd: str,
    timeout: float,
    output: OutputSink,
    cancel: asyncio.Event,
    progress: Progress,
    image: str | None = None,
    action_dir: Path | None = None,
    with_args: str | None = None,
    with_entrypoint: str | None = None,
    interpolate: Callable[[str], str] = lambda text: text,
    run_pre: bool = True,
) -> DockerActionRun:
    """Run a Docker action (`runs`, its files in `action_dir` on the host) or a `docker://image`
    step (`runs` None, `image` the `uses:` text): prepare or build its image, run pre-entrypoint
    (unless `run_pre` is False: its pre-if did not hold), then the main entrypoint, each in a step
    container of `backend` for at most `timeout` seconds in all. `env` is the step's environment
    as the runner made it (INPUT_*, GITHUB_*, env:), `with_args`/`with_entrypoint` the step's
    evaluated `with.args`/`with.entrypoint`; `interpolate` evaluates `runs.args` and `runs.env`.
    StepImageError (the message is for the log) when the image cannot be had; a step that
    cannot start is an ExecResult with `error`. The returned `post` is for run_post at job end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    preparing = asyncio.create_task(
        prepare_image(
            backend=backend, job=job, runs=runs, image=image, action_dir=action_dir, progress=progress
        )
    )
    cancelled = asyncio.create_task(cancel.wait())
    try:
        await asyncio.wait(
            {preparing, cancelled}, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        cancelled.cancel()
        if not preparing.done():
            # Closing the build's connection stops it in the engine; the backend removes its tag.
            preparing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await preparing
    if preparing.cancelled():
        stopped = cancel.is_set()
        return DockerActionRun(
            result=ExecResult(None, timed_out=not stopped, cancelled=stopped),
            image="",
            post=None,
        )
    ran = preparing.result()
    if with_args is not None and with_args.strip():
        args = split_args(with_args)
    else:
        args = [interpolate(arg) for arg in (runs.args if runs is not None else ())]
    runs_env = {name: interpolate(value) for name, value in (runs.env if runs is not None else {}).items()}
    step_env = {**env, **runs_env}
    main_entrypoint = _entrypoint(with_entrypoint) or _entrypoint(runs.entrypoint if runs else None)
    main = ContainerStep(
        image=ran, entrypoint=main_entrypoint, args=args, env=step_env, cwd=cwd, timeout=timeout
    )
    post = None
    if runs is not None and _entrypoint(runs.post_entrypoint) is not None:
        post = dataclasses.replace(main, entrypoint=_entrypoint(runs.post_entrypoint))
    if run_pre and runs is not None and _entrypoint(runs.pre_entrypoint) is not None:
        pre = dataclasses.replace(
            main, entrypoint=_entrypoint(runs.pre_entrypoint), timeout=deadline - loop.time()
        )
        result = await backend.run_step_container(job, pre, output=output, cancel=cancel)
        if result.exit_code != 0 or result.error is not None:
            return DockerActionRun(result=result, image=ran, post=post, runs_env=runs_env)
    main = dataclasses.replace(main, timeout=deadline - loop.time())
    result = await backend.run_step_container(job, main, output=output, cancel=cancel)
    return DockerActionRun(result=result, image=ran, post=post, runs_env=runs_env)


async def run_post(
    backend: Backend,
    job: Job,
    run: DockerActionRun,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float,
    output: OutputSink,
    cancel: asyncio.Event,
) -> ExecResult | None:
    """post-entrypoint of an action run earlier in the job (None when it has none). `env` replaces
    the main step's environment (the runner adds STATE_* from GITHUB_STATE); `runs.env` stays over it."""
    if run.post is None:
        return None
    post = run.post
    if env is not None:
        post = dataclasses.replace(post, env={**env, **run.runs_env})
    post = dataclasses.replace(post, timeout=timeout)
    return await backend.run_step_container(job, post, output=output, cancel=cancel)
