"""How a step's process is confined: bubblewrap when it works, resource limits always.

With bubblewrap (`SPINDLE_SANDBOX=auto` and the probe passes, or `required`) a step sees the
host's filesystem read-only, a private /tmp, fresh /dev and /proc, its own job directory as the
only writable place, the service's data directory (database, other runs' workspaces) hidden,
and no network (new empty network namespace) unless the step is a checkout, which must reach
the knot. Its PID namespace dies with it, so nothing it started outlives the step.

Always, bubblewrap or not: a process group of its own (killed as a whole: SIGTERM, then
SIGKILL), an environment built from nothing (none of the service's SPINDLE_* variables or
credentials), and rlimits: CPU seconds, address space (SPINDLE_STEP_MEMORY_MB), file size
(SPINDLE_STEP_MAX_FILE_MB), core dumps off, and processes (SPINDLE_STEP_MAX_PROCESSES).
RLIMIT_NPROC counts every process of the user, and the kernel does not enforce it for root
(or any process with CAP_SYS_RESOURCE/CAP_SYS_ADMIN): run the service as a dedicated
unprivileged user for the process limit to hold.

Without bubblewrap (`off`, or `auto` when the probe fails: one warning in the service log and a
line in every run's log) only the second paragraph holds: a step runs as the service's user and
can read and write whatever that user can (the database, other runs' workspaces, the service's
own /proc/<pid>/environ) and reach any network. `required` refuses every run instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import pwd
import resource
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

PROBE_ARGS = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--die-with-parent"]
PROBE_TIMEOUT = 15.0
# What a step's PATH holds: the usual system directories, nothing from the service's environment.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxUnavailable(RuntimeError):
    """SPINDLE_SANDBOX=required and bubblewrap does not work on this host."""


@dataclass(frozen=True)
class SandboxStatus:
    """The outcome of the start-up probe: `bwrap`, or `rlimits` (with why) when it is not used."""

    mode: Literal["bwrap", "rlimits"]
    reason: str
    bwrap: str | None = None  # path of the bwrap binary

    def describe(self) -> str:
        if self.mode == "bwrap":
            return "bubblewrap (read-only host, private /tmp, no network) with resource limits"
        return f"resource limits only, no filesystem or network isolation ({self.reason})"


async def probe(setting: Literal["auto", "required", "off"]) -> SandboxStatus:
    """Try bubblewrap once; `off` never uses it, `required` raises when it does not work."""
    if setting == "off":
        return SandboxStatus("rlimits", "SPINDLE_SANDBOX=off")
    bwrap = shutil.which("bwrap")
    reason = ""
    if bwrap is None:
        reason = "bwrap is not installed"
    else:
        try:
            proc = await asyncio.create_subprocess_exec(
                bwrap,
                *PROBE_ARGS,
                "true",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": DEFAULT_PATH},
            )
            _, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
            if proc.returncode == 0:
                return SandboxStatus("bwrap", "the probe passed", bwrap)
            reason = f"bwrap failed: {err.decode(errors='replace').strip() or f'exit code {proc.returncode}'}"
        except (OSError, TimeoutError) as exc:
            reason = f"bwrap could not run: {exc or type(exc).__name__}"
    if setting == "required":
        raise SandboxUnavailable(f"SPINDLE_SANDBOX=required but bubblewrap does not work here: {reason}")
    log.warning("running steps without bubblewrap (resource limits only): %s", reason)
    return SandboxStatus("rlimits", reason)


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    max_file_mb: int
    max_processes: int
    cpu_seconds: int


def limits_preexec(limits: Limits) -> Callable[[], None]:
    """A preexec_fn applying the rlimits in the child, before exec (inherited by the sandbox)."""
    mb = 1024 * 1024
    values = [
        (resource.RLIMIT_AS, limits.memory_mb * mb),
        (resource.RLIMIT_FSIZE, limits.max_file_mb * mb),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_CORE, 0),
    ]

    def apply() -> None:
        for which, value in values:
            _soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))

    return apply


def cpu_seconds_for(timeout: float) -> int:
    # CPU time can outrun wall time on several cores; the wall-clock timeout is the real bound.
    return max(60, math.ceil(timeout * (os.cpu_count() or 1)) + 60)


def wrap(
    status: SandboxStatus,
    argv: Sequence[str],
    *,
    writable: Path,
    cwd: Path,
    network: bool,
    hidden: Sequence[Path] = (),
) -> list[str]:
    """The command line that runs `argv` in the sandbox (unchanged without bubblewrap)."""
    if status.mode != "bwrap" or status.bwrap is None:
        return list(argv)
    args = [status.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    covered = [Path("/tmp")]
    for path in hidden:
        if any(path == c or c in path.parents for c in covered):
            continue
        # The database and other runs' workspaces live here: a step must not read them.
        if path.is_dir():
            args += ["--tmpfs", str(path)]
            covered.append(path)
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    args += ["--bind", str(writable), str(writable)]
    args += ["--unshare-all", "--hostname", "spindle", "--die-with-parent"]
    if network:
        args.append("--share-net")
    args += ["--chdir", str(cwd), "--", *argv]
    return args


def base_environment(*, home: Path) -> dict[str, str]:
    """The environment every step starts from: nothing inherited from the service."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    return {
        "PATH": DEFAULT_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh",
        "TERM": "dumb",
        "GIT_TERMINAL_PROMPT": "0",
    }
