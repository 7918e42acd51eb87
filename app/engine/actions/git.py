"""The git commands that get an action's files onto the host, none of which runs its code.

git runs with the checkout's environment built from nothing (`app.engine.fetch.git_env`: no
config, hooks or credential helpers, http(s) only) and only these commands: `ls-remote` to turn a
tag or branch into a commit, `init` + `fetch --depth=1` of that commit, and `checkout` of its files
into an empty directory. `checkout` writes files and symlinks as they are in the commit and, like
any git checkout, never writes through a symlink; reading the files later does not follow links
out of the directory either (definition.load_definition).

A process is killed when its command times out or its task is cancelled, so an interrupted
fetch leaves nothing running.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.engine import fetch
from app.engine.fetch import FETCH_TIMEOUT

LS_REMOTE_TIMEOUT = 60.0
LOCAL_TIMEOUT = 120.0  # init, rev-parse, checkout: no network
MAX_OUTPUT_LINES = 20  # of git's output, kept for an error message

FULL_COMMIT_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
SHORT_COMMIT_RE = re.compile(r"[0-9a-f]{7,39}")


class GitFailed(Exception):
    """A git command failed; the message says why in words a user can act on."""


@dataclass(frozen=True)
class Remote:
    url: str
    # `-c` settings for this remote: the addresses its host was checked at, no redirects.
    config: tuple[str, ...] = ()

    def options(self) -> list[str]:
        return [option for setting in self.config for option in ("-c", setting)]


def is_full_commit(ref: str) -> bool:
    return FULL_COMMIT_RE.fullmatch(ref) is not None


async def run_git(*args: str, cwd: Path, home: Path, timeout: float) -> tuple[int, str]:
    """`git args...` in `cwd`; its exit code and the last lines of its output (stdout and stderr)."""
    try:
        code, stdout, stderr = await fetch.run_git(*args, cwd=cwd, env=fetch.git_env(home), timeout=timeout)
    except FileNotFoundError as exc:
        raise GitFailed(str(exc)) from None
    except TimeoutError:
        raise GitFailed(f"git {args[0]} took longer than {timeout:g} s") from None
    return code, stdout + stderr


def describe_failure(output: str) -> str:
    """Why a network command failed, from git's and curl's words."""
    lowered = output.lower()
    if "could not resolve host" in lowered:
        reason = "the host cannot be resolved"
    elif any(
        words in lowered
        for words in ("failed to connect", "couldn't connect", "connection refused", "no route to host")
    ):
        reason = "the host is unreachable"
    elif "timed out" in lowered or "timeout" in lowered:
        reason = "the host did not answer in time"
    elif "ssl" in lowered or "certificate" in lowered or "tls" in lowered:
        reason = "a TLS connection to the host failed"
    elif "not found" in lowered or "error: 404" in lowered:
        reason = "the repository does not exist (or is not public)"
    elif "error: 401" in lowered or "error: 403" in lowered or "authentication" in lowered:
        reason = "the repository is not public"
    elif "redirect" in lowered:
        reason = "the server redirected elsewhere"
    else:
        reason = "git failed"
    lines = [line.strip() for line in output.splitlines() if line.strip()][-MAX_OUTPUT_LINES:]
    return f"{reason} ({lines[-1]})" if lines else reason


async def ls_remote(remote: Remote, ref: str, *, home: Path) -> tuple[str, str] | None:
    """The commit `ref` names on `remote` and the full name of that ref (a tag before a branch, as
    `git rev-parse` prefers), or None when it names neither."""
    tag, branch = f"refs/tags/{ref}", f"refs/heads/{ref}"
    code, output = await run_git(
        *remote.options(), "ls-remote", "--", remote.url, tag, f"{tag}^{{}}", branch,
        cwd=home, home=home, timeout=LS_REMOTE_TIMEOUT,
    )  # fmt: skip
    if code != 0:
        raise GitFailed(describe_failure(output))
    found: dict[str, str] = {}
    for line in output.splitlines():
        commit, _, name = line.partition("\t")
        if is_full_commit(commit):
            found[name.strip()] = commit
    # An annotated tag's own id is not a commit's: its peeled line (`^{}`) gives the commit.
    if f"{tag}^{{}}" in found:
        return found[f"{tag}^{{}}"], tag
    for name in (tag, branch):
        if name in found:
            return found[name], name
    return None


async def fetch_files(remote: Remote, commit: str, *, ref: str | None, work: Path, files: Path) -> None:
    """The files of `commit` from `remote`, checked out into the empty directory `files`; `work`
    holds the repository (and git's HOME) and may be removed afterwards. `ref`, when the commit came
    from a tag or branch, is fetched instead if the server will not serve a commit by its id."""
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    code, output = await run_git("init", "-q", str(repo), cwd=work, home=home, timeout=LOCAL_TIMEOUT)
    if code != 0:
        raise GitFailed(f"git init failed: {output.strip()}")
    fetch = [*remote.options(), "fetch", "--quiet", "--no-tags", "--depth=1", "--", remote.url]
    code, output = await run_git(*fetch, commit, cwd=repo, home=home, timeout=FETCH_TIMEOUT)
    if code != 0 and ref is not None:
        code, output = await run_git(*fetch, ref, cwd=repo, home=home, timeout=FETCH_TIMEOUT)
    if code != 0:
        if "not our ref" in output or "couldn't find remote ref" in output.lower():
            raise GitFailed(f"the server has no commit {commit}")
        raise GitFailed(describe_failure(output))
    code, fetched = await run_git(
        "rev-parse", "--verify", "--quiet", "FETCH_HEAD^{commit}", cwd=repo, home=home, timeout=LOCAL_TIMEOUT
    )
    if code != 0 or fetched.strip() != commit:
        raise GitFailed(f"the server gave {fetched.strip() or 'nothing'} for {ref or commit}, not {commit}")
    files.mkdir(parents=True, exist_ok=True)
    code, output = await run_git(
        "--git-dir", str(repo / ".git"), "--work-tree", str(files), "checkout", "--quiet", "--force",
        commit, "--", ".",
        cwd=repo, home=home, timeout=LOCAL_TIMEOUT,
    )  # fmt: skip
    if code != 0:
        raise GitFailed(f"git checkout of {commit} failed: {output.strip()}")
