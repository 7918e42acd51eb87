"""Fetching the run's commit from the knot on the host, for `actions/checkout` in the container.

The spindle, not the job, talks to the knot: the knot is often on an address the job's network
policy keeps jobs away from (a LAN, this host), and the fetch needs no code of the repo's. git
runs here with an environment built from nothing: no system or global config, no hooks, no
credential helpers, only http(s) transports, and only `init` and `fetch`, which never run content
of the repository. What the job receives is the resulting `.git` directory, streamed into its
container as a tar archive; the checkout of files then happens inside the container.

Fetches are shared by the jobs of a run (cached by url, target and depth) and removed with the
run's scratch directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tarfile
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

FETCH_TIMEOUT = 600.0
MAX_FETCH_OUTPUT = 200  # lines of git's progress kept for the log


class FetchError(RuntimeError):
    """The knot did not give us the commit; the message is for the run's log."""


def git_env(home: Path) -> dict[str, str]:
    """git with nothing configured but what the command line says."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_ALLOW_PROTOCOL": "http:https",
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "core.hooksPath",
        "GIT_CONFIG_VALUE_0": os.devnull,
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": "",
    }


@dataclass(frozen=True)
class Fetched:
    git_dir: Path  # a `.git` directory holding `commit`
    commit: str


async def run_git(*args: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """`git args...` in `cwd`: (exit code, stdout, stderr). Past `timeout` (TimeoutError) or when its
    task is cancelled, git and its helpers (`git remote-http`) are killed: nothing runs on alone."""
    git = shutil.which("git", path=env["PATH"])
    if git is None:
        raise FileNotFoundError("git is not installed on this spindle (Debian package git)")
    # A session of its own, so that the whole group can be killed.
    process = await asyncio.create_subprocess_exec(
        git, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.shield(process.wait())
        raise
    decode = partial(bytes.decode, encoding="utf-8", errors="replace")
    return process.returncode or 0, decode(stdout), decode(stderr)


async def _git(*args: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """run_git for the checkout's fetch: FetchError for what the run's log should say."""
    try:
        code, stdout, stderr = await run_git(*args, cwd=cwd, env=env, timeout=timeout)
    except FileNotFoundError as exc:
        raise FetchError(str(exc)) from None
    except TimeoutError:
        raise FetchError(f"git {args[0]} took longer than {timeout:g} s") from None
    lines = (stdout + stderr).splitlines()[-MAX_FETCH_OUTPUT:]
    return code, "\n".join(lines)


class Fetcher:
    """The commits a run checks out, fetched once per run into `scratch`."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._done: dict[tuple[str, str, int], Fetched] = {}
        self._lock = asyncio.Lock()

    async def fetch(self, *, url: str, target: str, depth: int, log: list[str]) -> Fetched:
        """`target` (a commit id, branch or tag) from `url`; `depth` 0 fetches all history."""
        key = (url, target, depth)
        async with self._lock:
            if key in self._done:
                return self._done[key]
            fetched = await self._fetch(url=url, target=target, depth=depth, log=log)
            self._done[key] = fetched
            return fetched

    async def _fetch(self, *, url: str, target: str, depth: int, log: list[str]) -> Fetched:
        self.scratch.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="checkout-", dir=self.scratch))
        env = git_env(root / "home")
        (root / "home").mkdir()
        repo = root / "repo"
        code, output = await _git("init", "-q", str(repo), cwd=root, env=env, timeout=60)
        if code != 0:
            raise FetchError(f"git init failed: {output}")
        deepen = [f"--depth={depth}"] if depth > 0 else []
        log.append(f"Fetching {target} from {url}")
        code, output = await _git(
            "-c", "protocol.version=2", "fetch", "--no-tags", *deepen, url, target,
            cwd=repo, env=env, timeout=FETCH_TIMEOUT,
        )  # fmt: skip
        if code == 0:
            code, commit = await _git(
                "rev-parse", "--verify", "FETCH_HEAD^{commit}", cwd=repo, env=env, timeout=30
            )
        else:
            log.append(f"the knot refused a fetch of {target} itself; fetching its branches and tags instead")
            code, output = await _git(
                "fetch", "--no-tags", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*",
                cwd=repo, env=env, timeout=FETCH_TIMEOUT,
            )  # fmt: skip
            if code != 0:
                raise FetchError(f"git fetch from {url} failed:\n{output}")
            commit = ""
            for candidate in (f"refs/remotes/origin/{target}^{{commit}}", f"{target}^{{commit}}"):
                code, commit = await _git(
                    "rev-parse", "--verify", "--quiet", candidate, cwd=repo, env=env, timeout=30
                )
                if code == 0:
                    break
            if code != 0:
                raise FetchError(f"the knot has no commit, branch or tag {target}")
        commit = commit.strip()
        if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", target) and commit != target:
            raise FetchError(f"the knot does not have commit {target}")
        return Fetched(git_dir=repo / ".git", commit=commit)


def tar_git_dir(git_dir: Path, *, into: str, out: Path) -> Path:
    """A tar of `git_dir` whose members land at `<into>/.git/...`; links are kept as links."""
    with tarfile.open(out, "w") as archive:
        archive.add(git_dir, arcname=f"{into.strip('/')}/.git", recursive=True)
    return out


async def archive_files(fetched: Fetched, *, into: str, out: Path) -> None:
    """The commit's files as a tar whose members land under `into` (for an image without git)."""
    env = git_env(out.parent)
    code, output = await _git(
        "--git-dir", str(fetched.git_dir), "archive", "--format=tar", f"--prefix={into.strip('/')}/",
        "-o", str(out), fetched.commit,
        cwd=out.parent, env=env, timeout=FETCH_TIMEOUT,
    )  # fmt: skip
    if code != 0:
        raise FetchError(f"git archive failed:\n{output}")
