"""Knot XRPC client: the workflow files of a repo at a commit, and the repo's git clone URL.

    KnotClient.workflow_files(knot=, repo_did=, repo_name=, sha=)
      1. GET /xrpc/sh.tangled.repo.tree?repo=R&ref=sha&path=.github/workflows
      2. GET /xrpc/sh.tangled.repo.blob?repo=R&ref=sha&path=.github/workflows/<f>   (concurrently)
    KnotClient.branch_commit(knot=, repo_did=, repo_name=, branch=)   (a manual knot event's commit)
      GET /xrpc/sh.tangled.repo.branch?repo=R&name=<branch> → {"hash", ...}

`R` is the repo DID on current knots and `<did>/<name>` on older ones: the DID is tried first and
the knot's answer to it (400, or 404 RepoNotFound) sends us to the other form; each knot's
working form is remembered. Content at a commit never changes, so answers are cached by
(knot, repo, sha, path) in a bounded LRU.

HTTP is aiohttp, not the httpx the rest of the service uses: a cold trigger makes one request per
workflow file, and measured here (bench/bench_trigger.py's knot, 10 concurrent GETs) httpx spends
about 1.8 ms of CPU per request, mostly in httpcore's pool bookkeeping, where aiohttp spends about
0.2 ms; with ten files that is the difference between meeting the cold-path target and not.

Errors (HTTP client errors never leave this module):
    InvalidRequest (400)   the knot lacks the commit or the repo, no workflow files, limits exceeded
    UpstreamFailure (502)  unreachable, timed out, 5xx, redirects or answers that are not the format
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from app.runs.schemas import COMMIT_RE
from app.workflows.workflow import WORKFLOWS_DIR, WorkflowFile, is_workflow_filename, workflow_stem
from app.xrpc.errors import InvalidRequest, UpstreamFailure

TREE_NSID = "sh.tangled.repo.tree"
BLOB_NSID = "sh.tangled.repo.blob"
BRANCH_NSID = "sh.tangled.repo.branch"

MAX_WORKFLOW_FILES = 50
MAX_FILE_BYTES = 512 * 1024
MAX_TOTAL_BYTES = 4 * 1024 * 1024
# A JSON answer may carry a file base64-encoded and escaped: bound what we read from a knot.
MAX_RESPONSE_BYTES = 2 * MAX_FILE_BYTES + 64 * 1024
CACHE_MAX_BYTES = 64 * 1024 * 1024
MAX_CONNECTIONS = 100  # open to all knots at once
READ_CHUNK = 64 * 1024

RepoForm = Literal["did", "did/name"]
# git modes of regular files, as go-git writes them (0100644) or as ls-tree does (100644).
_FILE_MODES = {"0100644", "0100755", "100644", "100755"}


class _RepoNotFound(Exception):
    """The knot does not know the repo under the `repo` form we sent."""


@dataclass
class _Answer:
    status: int
    body: Any  # decoded JSON, or None when the body was not JSON

    @property
    def error(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return self.body["error"]  # type: ignore[no-any-return]
        return None

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), str):
            return self.body["message"][:200]  # type: ignore[no-any-return]
        return ""


class _LruCache:
    """Bounded by total bytes of cached text; least recently used entries go first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, ...], tuple[Any, int]] = OrderedDict()

    def get(self, key: tuple[str, ...]) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: tuple[str, ...], value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._items)


class KnotClient:
    """Reads workflow files from knots over XRPC; https, or http for every knot in dev mode."""

    def __init__(self, *, dev: bool, timeout: float, cache_max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.dev = dev
        self.seconds = timeout
        self.cache = _LruCache(cache_max_bytes)
        self._forms: dict[str, RepoForm] = {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (a session belongs to the loop it was made in).
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.seconds, sock_read=self.seconds),
                # No proxy or .netrc from the environment: requests go to the registered knot only.
                trust_env=False,
            )
        return session

    async def close(self) -> None:
        """Close the connections to knots (at shutdown)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def scheme(self) -> str:
        return "http" if self.dev else "https"

    def base_url(self, knot: str) -> str:
        return f"{self.scheme}://{knot}"

    def clone_url(self, *, knot: str, repo_did: str, repo_name: str) -> str:
        """Where `git clone` finds the repo: `<scheme>://<knot>/<did>/<name>`."""
        return f"{self.base_url(knot)}/{repo_did}/{repo_name}"

    def repo_form(self, knot: str) -> RepoForm:
        """The `repo` parameter form this knot answered to last (the DID until we know better)."""
        return self._forms.get(knot, "did")

    def cached_workflow_files(
        self, *, knot: str, repo_did: str, repo_name: str, sha: str
    ) -> tuple[WorkflowFile, ...] | None:
        """The workflow files when every one is cached (no request needed), else None."""
        assembled = self.cache.get(("files", knot, repo_did, repo_name, sha))
        if assembled is not None:
            return assembled  # type: ignore[no-any-return]
        listing = self.cache.get(("tree", knot, repo_did, repo_name, sha))
        if not listing:
            return None
        files = []
        for name, _ in listing:
            path = f"{WORKFLOWS_DIR}/{name}"
            source = self.cache.get(("blob", knot, repo_did, repo_name, sha, path))
            if source is None:
                return None
            files.append(WorkflowFile(path, source))
        assembled = tuple(files)
        # Kept as assembled too; counted at full size although it shares the blobs' text, so that
        # the cache stays within its bound even when the blob entries are evicted first.
        size = sum(len(f.path) + len(f.source) for f in assembled)
        self.cache.put(("files", knot, repo_did, repo_name, sha), assembled, size)
        return assembled

    async def workflow_files(
        self,
        *,
        knot: str,
        repo_did: str,
        repo_name: str,
        sha: str,
        stems: Collection[str] | None = None,
        allow_none: bool = False,
    ) -> list[WorkflowFile]:
        """The workflow files of the repo at commit `sha`, sorted by name; 400 when there are none.

        With `stems`, only the files with those stems are fetched, and none is not an error; nor
        is it with `allow_none` (describing a commit's workflows, where none is an answer).
        """
        repo = (knot, repo_did, repo_name, sha)
        listing = self.cache.get(("tree", *repo))
        if listing is None:
            listing = await self._list_workflows(knot, repo_did, repo_name, sha)
            self.cache.put(("tree", *repo), listing, sum(len(name) for name, _ in listing) + 64)
        if stems is not None:
            listing = [(name, size) for name, size in listing if workflow_stem(name) in stems]
            if not listing:
                return []
        if not listing and allow_none:
            return []
        if not listing:
            raise InvalidRequest(
                f"no workflow files: {WORKFLOWS_DIR} has no *.yml or *.yaml file at commit {sha} "
                f"of {repo_did}/{repo_name}"
            )
        sources = await asyncio.gather(
            *(self._workflow_source(knot, repo_did, repo_name, sha, name, size) for name, size in listing)
        )
        total = sum(len(source) for source in sources)
        if total > MAX_TOTAL_BYTES:
            raise InvalidRequest(f"the workflow files add up to more than {MAX_TOTAL_BYTES // 1024} KiB")
        return [
            WorkflowFile(f"{WORKFLOWS_DIR}/{name}", source)
            for (name, _), source in zip(listing, sources, strict=True)
        ]

    async def branch_commit(self, *, knot: str, repo_did: str, repo_name: str, branch: str) -> str:
        """The commit id a branch points at now (`sh.tangled.repo.branch`); never cached."""
        answer = await self._call(knot, BRANCH_NSID, repo_did, repo_name, {"name": branch})
        repo = f"{repo_did}/{repo_name}"
        if answer.status == 404 and answer.error == "BranchNotFound":
            raise InvalidRequest(f"knot {knot} has no branch {branch!r} in {repo}")
        if _is_repo_not_found(answer):
            raise InvalidRequest(f"knot {knot} does not have the repo {repo}")
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise UpstreamFailure(f"knot {knot} answered {BRANCH_NSID} with HTTP {answer.status}")
        commit = answer.body.get("hash")
        if not isinstance(commit, str) or not COMMIT_RE.match(commit):
            raise UpstreamFailure(f"knot {knot} answered {BRANCH_NSID} without a commit id")
        return commit.lower()

    async def _list_workflows(
        self, knot: str, repo_did: str, repo_name: str, sha: str
    ) -> list[tuple[str, int]]:
        answer = await self._call(knot, TREE_NSID, repo_did, repo_name, {"ref": sha, "path": WORKFLOWS_DIR})
        if answer.status == 404 and answer.error == "PathNotFound":
            return []
        self._raise_for(answer, knot, repo_did, repo_name, sha, TREE_NSID)
        files = answer.body.get("files") if isinstance(answer.body, dict) else None
        if not isinstance(files, list):
            raise UpstreamFailure(f"knot {knot} answered {TREE_NSID} without a list of files")
        listing: list[tuple[str, int]] = []
        for entry in files:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise UpstreamFailure(f"knot {knot} answered {TREE_NSID} with a malformed file entry")
            name, mode, size = entry["name"], entry.get("mode"), entry.get("size", 0)
            # Only regular files directly in the directory: not symlinks, submodules or subtrees.
            if not is_workflow_filename(name) or not _is_regular_file(mode, entry):
                continue
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                size = 0
            if size > MAX_FILE_BYTES:
                raise InvalidRequest(
                    f"workflow {WORKFLOWS_DIR}/{name} is larger than {MAX_FILE_BYTES // 1024} KiB"
                )
            listing.append((name, size))
        if len(listing) > MAX_WORKFLOW_FILES:
            raise InvalidRequest(
                f"{WORKFLOWS_DIR} has {len(listing)} workflow files at commit {sha}: "
                f"at most {MAX_WORKFLOW_FILES} are allowed"
            )
        listing.sort()
        return listing

    async def _workflow_source(
        self, knot: str, repo_did: str, repo_name: str, sha: str, name: str, size: int
    ) -> str:
        path = f"{WORKFLOWS_DIR}/{name}"
        key = ("blob", knot, repo_did, repo_name, sha, path)
        cached = self.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        answer = await self._call(knot, BLOB_NSID, repo_did, repo_name, {"ref": sha, "path": path})
        self._raise_for(answer, knot, repo_did, repo_name, sha, BLOB_NSID)
        source = _decode_blob(answer.body, knot, path)
        self.cache.put(key, source, len(source))
        return source

    async def _call(
        self, knot: str, nsid: str, repo_did: str, repo_name: str, params: dict[str, str]
    ) -> _Answer:
        """Call with the knot's remembered `repo` form; on a repo-not-found answer, try the other."""
        forms: dict[RepoForm, str] = {"did": repo_did, "did/name": f"{repo_did}/{repo_name}"}
        first = self.repo_form(knot)
        second: RepoForm = "did/name" if first == "did" else "did"
        answer = await self._get(knot, nsid, {"repo": forms[first], **params})
        if not _is_repo_not_found(answer):
            return answer
        fallback = await self._get(knot, nsid, {"repo": forms[second], **params})
        if not _is_repo_not_found(fallback):
            self._forms[knot] = second
            return fallback
        return answer

    async def _get(self, knot: str, nsid: str, params: dict[str, str]) -> _Answer:
        url = f"{self.base_url(knot)}/xrpc/{nsid}"
        try:
            # The session's timeouts bound each read; this bounds the whole request (a knot
            # trickling bytes). The body is counted as it arrives (decompressed): a knot cannot
            # make us hold more than MAX_RESPONSE_BYTES.
            async with asyncio.timeout(self.seconds):
                async with self._http().get(url, params=params, allow_redirects=False) as response:
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(READ_CHUNK):
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise UpstreamFailure(f"knot {knot} answered {nsid} with an oversized body")
                    status = response.status
        except TimeoutError:
            raise UpstreamFailure(f"knot {knot} did not answer {nsid} within {self.seconds:g} s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(f"knot {knot} is unreachable: {type(exc).__name__}") from None
        try:
            decoded = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            decoded = None
        return _Answer(status, decoded)

    @staticmethod
    def _raise_for(answer: _Answer, knot: str, repo_did: str, repo_name: str, sha: str, nsid: str) -> None:
        if answer.status == 200:
            if not isinstance(answer.body, dict):
                raise UpstreamFailure(f"knot {knot} answered {nsid} with something that is not JSON")
            return
        repo = f"{repo_did}/{repo_name}"
        if answer.error == "RefNotFound":
            raise InvalidRequest(f"knot {knot} does not have commit {sha} in {repo}")
        if _is_repo_not_found(answer):
            said = f" (it said: {answer.message})" if answer.message else ""
            raise InvalidRequest(f"knot {knot} does not have the repo {repo}{said}")
        if answer.status == 404 and answer.error == "FileNotFound":
            # The tree just listed the file: a knot that contradicts itself is failing.
            raise UpstreamFailure(f"knot {knot} listed a workflow file it then could not find")
        detail = f" {answer.error}" if answer.error else ""
        raise UpstreamFailure(f"knot {knot} answered {nsid} with HTTP {answer.status}{detail}")


def _is_repo_not_found(answer: _Answer) -> bool:
    # Older knots answer a bare DID with 400 InvalidRequest; current ones say RepoNotFound (400 or 404).
    if answer.error == "RepoNotFound":
        return answer.status in (400, 404)
    return answer.status == 400 and answer.error == "InvalidRequest"


def _is_regular_file(mode: Any, entry: dict[str, Any]) -> bool:
    if isinstance(mode, str):
        if mode in _FILE_MODES:
            return True
        # Older knots wrote Go's os.FileMode string: "-rw-r--r--" for a regular file.
        if len(mode) == 10 and mode.startswith("-"):
            return True
        return False
    return entry.get("is_file") is True


def _decode_blob(body: dict[str, Any], knot: str, path: str) -> str:
    content = body.get("content")
    encoding = body.get("encoding") or "utf-8"
    if not isinstance(content, str):
        raise UpstreamFailure(f"knot {knot} answered the blob {path} without content")
    if encoding == "base64":
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamFailure(f"knot {knot} sent {path} as invalid base64") from None
        if len(raw) > MAX_FILE_BYTES:
            raise InvalidRequest(f"workflow {path} is larger than {MAX_FILE_BYTES // 1024} KiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"workflow {path} is not UTF-8 text") from None
    elif encoding == "utf-8":
        text = content
        if len(text.encode("utf-8", errors="surrogatepass")) > MAX_FILE_BYTES:
            raise InvalidRequest(f"workflow {path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    else:
        raise UpstreamFailure(f"knot {knot} sent {path} in an unknown encoding {encoding!r}")
    if "\0" in text:
        raise InvalidRequest(f"workflow {path} is binary, not YAML text")
    return text.removeprefix("\ufeff")
