"""The interface between the workflow runner and whatever executes processes for it.

The runner (app/engine/runner.py) does everything GitHub-specific: expressions, matrix, step
order, env files, outputs, checkout commands. An engine only provides places to work and runs
one process at a time in them, the way Tangled's spindle engines (nixery) provide
SetupWorkflow / RunStep / DestroyWorkflow. The default is app/engine/local.py (processes on
this host, in bubblewrap when it works); a Docker or Nixery engine implements the same four
methods (create_workspace → a container with the job directory mounted at the same path,
execute → `docker exec`, destroy → remove containers and directories).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

# (stream, line): stream is "stdout" or "stderr", line has no trailing newline.
OutputSink = Callable[[str, str], None]


class EngineUnavailable(RuntimeError):
    """The engine cannot run anything (e.g. SPINDLE_SANDBOX=required without bubblewrap)."""


@dataclass(frozen=True)
class Workspace:
    """One job instance's directories, as paths the engine's processes see."""

    root: Path  # everything writable by the job lives under it
    workspace: Path  # GITHUB_WORKSPACE: the checkout goes here
    temp: Path  # RUNNER_TEMP: scripts and the GITHUB_ENV/OUTPUT/PATH files
    home: Path  # HOME


@dataclass
class ExecRequest:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    timeout: float  # seconds of wall-clock time before the process group is killed
    network: bool = False  # only checkout needs it: it fetches from the knot


@dataclass
class ExecResult:
    exit_code: int | None  # 128 + N when killed by signal N
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None  # the process could not be started at all
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    """Runs processes for workflow runs; one instance serves every run of the service."""

    name: str

    async def start(self) -> None:
        """Probe what the host offers (called once before the first run)."""

    def describe(self) -> str:
        """One line for the run's log: what confines the steps."""
        ...

    def check(self) -> None:
        """Raise EngineUnavailable with a clear reason when no run can be executed."""

    async def create_workspace(self, *, run_id: int, job_key: str) -> Workspace:
        """Fresh, empty directories for one job instance of a run."""
        ...

    async def execute(
        self, workspace: Workspace, request: ExecRequest, *, output: OutputSink, cancel: asyncio.Event
    ) -> ExecResult:
        """Run one process to completion, timeout or cancel; every line goes to `output`."""
        ...

    async def destroy(self, *, run_id: int) -> None:
        """Remove everything the run left behind (workspaces, processes)."""
