"""The interface between the workflow runner and what executes jobs for it.

The runner (app/engine/runner.py) does everything GitHub-specific: expressions, matrix, step
order, file commands, outputs, checkout. A backend provides one isolated place per job and runs
processes in it. Lifecycle, as Woodpecker's backends have it:

    start()                           once, before the first job: find and probe the engine
    setup_job(spec) -> Job            a job's container (its image pulled or built), its own
                                      network, its services started and healthy
      put_files(job, files)           write the step's script, the event payload
      exec(job, request, ...)         one process to completion, timeout or cancel
      read_file(job, path, limit)     a file command the step wrote (GITHUB_OUTPUT ...)
      limit_hits(job)                 which per-job limit a failed process ran into
      build_action_image(job, ...)    a Docker action's image, built from its Dockerfile
      prepare_step_image(job, image)  a `docker://` image, local or pulled
      run_step_container(job, step)   one container beside the job's, sharing its network and
                                      its files (/__w, /github), to completion, timeout or cancel
    destroy_job(job)                  containers, network and volumes of the job, gone
    reap(running=...)                 what a crashed process left behind, gone
    close()                           at shutdown

The container backend (app/engine/container/backend.py) is the one the service uses: every job
in a container of Podman or Docker. A Kubernetes backend would be its sibling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from app.engine.container.options import ContainerOptions

# Looked for in a job's image once, at setup: the default shell, `shell: python`, checkout.
PROBED_COMMANDS = ("bash", "sh", "python", "python3", "pwsh", "git", "node")
# (stream, line): stream is "stdout" or "stderr", line has no trailing newline.
OutputSink = Callable[[str, str], None]
Progress = Callable[[str], None]


class EngineUnavailable(RuntimeError):
    """No job can run: the engine is missing, does not answer, or cannot be made safe."""


class JobSetupError(RuntimeError):
    """This job cannot start: its image cannot be had, a service never became healthy, a bad
    option. The message is for the run's log."""


class StepImageError(RuntimeError):
    """A step's image (a Docker action's Dockerfile, a `docker://` image) cannot be built or had.
    The message is for the run's log; the step fails, not the job's setup."""


class FileCommandError(RuntimeError):
    """A file the step controls is not a regular file, or larger than its cap."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    max_processes: int
    cpus: float
    disk_mb: int


@dataclass(frozen=True)
class ServiceSpec:
    id: str  # the service's key in `services:`; also its host name
    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    options: ContainerOptions = field(default_factory=ContainerOptions)
    ports: tuple[str, ...] = ()
    credentials: Mapping[str, str] | None = None
    command: tuple[str, ...] | None = None


@dataclass(frozen=True)
class JobSpec:
    run_id: int
    job_key: str  # unique in the run: "<n>-<job id>"
    image: str
    limits: Limits
    network: str  # "filtered" | "none"
    env: Mapping[str, str] = field(default_factory=dict)  # the container's own env (container.env)
    options: ContainerOptions = field(default_factory=ContainerOptions)
    credentials: Mapping[str, str] | None = None
    services: tuple[ServiceSpec, ...] = ()
    directories: tuple[str, ...] = ()  # created empty before the first step


@dataclass
class Job:
    """A running job's handle; what it holds is the backend's business."""

    spec: JobSpec
    container_id: str
    name: str
    services: dict[str, str] = field(default_factory=dict)  # service id -> container id
    network_id: str | None = None
    limit_hit: str | None = None  # set by the backend's watch when a limit stopped the job
    counters: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the container's own (image + container:)
    commands: frozenset[str] = frozenset()  # which of PROBED_COMMANDS the image has
    watch: asyncio.Task[None] | None = None
    volumes: dict[str, str] = field(default_factory=dict)  # mount path -> volume name
    meter: str | None = None  # the container that measures the volumes (the disk watch)
    steps: set[str] = field(default_factory=set)  # step containers running now
    images: dict[str, str] = field(default_factory=dict)  # build context digest -> image built


@dataclass
class ExecRequest:
    argv: list[str]
    env: dict[str, str]
    cwd: str  # a path inside the job's container
    timeout: float  # seconds of wall-clock time before every process the step started is killed
    user: str | None = None


@dataclass(frozen=True)
class ContainerStep:
    """A step that runs in a container of its own image (a Docker action, `docker://`)."""

    image: str
    entrypoint: list[str] | None  # None: the image's ENTRYPOINT
    args: list[str]  # the command (after the entrypoint); empty: the image's CMD
    env: dict[str, str]
    cwd: str  # a path inside the container, usually the workspace
    timeout: float


@dataclass
class ExecResult:
    exit_code: int | None  # 128 + N when killed by signal N
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None  # the process could not be started at all
    limit: str | None = None  # the per-job limit that stopped it, in words


@runtime_checkable
class Backend(Protocol):
    """Runs jobs for workflow runs; one instance serves every run of the service."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """One line for a run's log: what isolates the jobs."""
        ...

    def check(self) -> None:
        """Raise EngineUnavailable with a clear reason when no job can run."""

    async def setup_job(self, spec: JobSpec, *, progress: Progress) -> Job: ...

    async def put_files(self, job: Job, files: Mapping[str, bytes]) -> None: ...

    async def put_tar(self, job: Job, archive: Path) -> None:
        """A tar archive from the host, unpacked at the container's root."""

    async def exec(
        self, job: Job, request: ExecRequest, *, output: OutputSink, cancel: asyncio.Event
    ) -> ExecResult: ...

    async def read_files(self, job: Job, paths: Mapping[str, str], *, limit: int) -> dict[str, bytes]: ...

    async def build_action_image(
        self, job: Job, context: Path, dockerfile: str, *, progress: Progress
    ) -> str:
        """The image of `dockerfile` (a path relative to `context`, a directory on the host), built
        once per job and context content; StepImageError with the build's last lines if it fails."""
        ...

    async def prepare_step_image(self, job: Job, image: str, *, progress: Progress) -> str:
        """`image` as the engine names it, pulled when missing; StepImageError if it cannot be had."""
        ...

    async def run_step_container(
        self, job: Job, step: ContainerStep, *, output: OutputSink, cancel: asyncio.Event
    ) -> ExecResult:
        """`step` in a container that shares the job container's network and files, its output
        streamed, removed when it ends; killed on timeout or cancel."""
        ...

    async def destroy_job(self, job: Job) -> None: ...

    async def reap(self, *, running: Callable[[], Awaitable[Collection[int]]]) -> int:
        """Remove every job of this deployment whose run is not among `running()` (asked after
        listing what exists); the number of containers removed."""
        ...
