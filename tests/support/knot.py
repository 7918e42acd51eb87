"""A local Tangled knot over real HTTP, backed by real git repositories made with the `git` CLI.

    with TestKnot(tmp_path / "knot") as knot:          # or the `knot` fixture (tests/conftest.py)
        repo = knot.create_repo("did:plc:alice", "hello")              # a real git repo on disk
        sha = repo.commit({".github/workflows/ci.yml": "on: push\\n"})  # write files, commit → sha
        knot.host                                # "127.0.0.1:<port>": the `knot` of a trigger
        knot.url                                 # "http://127.0.0.1:<port>"
        knot.clone_url(repo)                     # http://127.0.0.1:<port>/did:plc:alice/hello

Endpoints (the wire format of Tangled's knotserver, `knotserver/xrpc/repo_{tree,blob}.go`):
- `GET /xrpc/sh.tangled.repo.tree?repo=&ref=&path=` → `{"ref", "parent", "dotdot", "files": [{"name",
  "mode", "size", "last_commit"?}], "readme"}`; `mode` as go-git writes it (`0100644`, `0100755`,
  `0040000`, `0120000`); a path that is a file gives `files: []`.
- `GET /xrpc/sh.tangled.repo.blob?repo=&ref=&path=` → `{"ref", "path", "content", "encoding":
  "utf-8"|"base64", "size", "isBinary", "mimeType"}`.
- `GET /xrpc/sh.tangled.repo.branch?repo=&name=` → `{"name", "hash", "shortHash", "when", "isDefault"}`;
  unknown branch → 404 `BranchNotFound`.
- Errors are `{"error", "message"}`: bad or unknown `repo` → 400 `InvalidRequest` / `RepoNotFound`
  (the knot answers RepoNotFound with 400, as the Go code does), unknown ref → 404 `RefNotFound`,
  missing tree path → 404 `PathNotFound`, missing blob → 404 `FileNotFound`, no path → 400.
- Git smart HTTP at `/{did}/{name}` (`git http-backend` as CGI), so
  `git clone http://127.0.0.1:<port>/<did>/<name>` works (read-only: clone and fetch).

`repo` parameter (`knot.repo_param`):
- `"any"` (default, a current knot): the repo DID alone, or `<did>/<name>`. A bare DID names a repo
  only when exactly one repo on this knot has it (it is the repo's own DID on real knots).
- `"did/name"` (an older knot): a bare DID → 400 `InvalidRequest` "invalid repo format"; this is
  what makes a spindle fall back from the DID to `<did>/<name>`.
- `"did"`: only the bare DID; `<did>/<name>` → 400 `InvalidRequest`.

Knobs for XRPC answers (git HTTP is never slowed or broken by them); each takes `nsid=` to hit one
method only (e.g. `nsid=BLOB`), and `knot.reset()` clears them all:
- `knot.latency = 0.05`                       seconds before every XRPC answer
- `knot.gather(10, nsid=BLOB)`                hold answers until 10 such requests are in flight at
                                              once, then answer them all (once): proves a client's
                                              concurrency, or that racing requests all got this far,
                                              without depending on timing
- `knot.fail(500, error="Boom", message="…")` answer this status and `{"error","message"}` body
- `knot.fail(502, body="<html>…")`           a non-JSON body with this status
- `knot.answer_garbage()`                     200 with a body that is not JSON
- `knot.answer_json({"files": 7})`            200 with this JSON instead of the real answer
- `knot.hang()`                               never answer (until `reset()` or the knot stops)
- `knot.blob_encoding = "base64"`             send every blob base64-encoded (default: like the
                                              knot, utf-8 for text and base64 for binary)

Request log: `knot.requests` is a list of `KnotRequest(method, path, query, nsid)` for every request
(XRPC and git); `knot.xrpc_requests(nsid=None)` filters it; `knot.clear_requests()` empties it.
`knot.peak_in_flight` is the most XRPC requests it was answering at once (with `gather` set, it
reaches the count only when a client sent them concurrently). A gathering that is never complete
answers the held requests after GATHER_SECONDS (a safety net, not a timing assertion) and says so in
`knot.gathering.broken`.

Extending (e.g. an `/events` WebSocket): pass `routes=[...]` (Starlette `Route`/`WebSocketRoute`)
to `TestKnot(...)`, or call `knot.add_route(path, endpoint, methods=...)` /
`knot.add_websocket_route(path, endpoint)` before or after start. They are matched before the git
catch-all route.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from tests.support.servers import ServerThread

TREE = "sh.tangled.repo.tree"
BLOB = "sh.tangled.repo.blob"
BRANCH = "sh.tangled.repo.branch"

# Commits made by tests must not depend on the user's git configuration.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_TERMINAL_PROMPT": "0",
}


def git_env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def git(*args: str, cwd: Path | str | None = None, input: bytes | None = None) -> str:
    """Run `git args...` and return its stdout; raise with stderr on failure."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, input=input, capture_output=True, env=git_env(), check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


class GitRepo:
    """A real git repository (with a work tree) that tests write files into and commit."""

    def __init__(self, path: Path, did: str, name: str) -> None:
        self.path = path
        self.did = did
        self.name = name

    @classmethod
    def init(cls, path: Path, did: str, name: str, *, object_format: str = "sha1") -> GitRepo:
        """`git init` at `path` on branch main; `object_format="sha256"` gives 64-hex commit ids."""
        path.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "-b", "main", f"--object-format={object_format}", str(path))
        return cls(path, did, name)

    def write(self, relpath: str, content: str | bytes, *, executable: bool = False) -> None:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)
        target.chmod(0o755 if executable else 0o644)

    def remove(self, relpath: str) -> None:
        git("rm", "-q", "-r", "--", relpath, cwd=self.path)

    def symlink(self, relpath: str, target: str) -> None:
        link = self.path / relpath
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    def commit(self, files: Mapping[str, str | bytes | None] | None = None, message: str = "commit") -> str:
        """Write `files` (None deletes a path), commit everything, return the new commit id."""
        for relpath, content in (files or {}).items():
            if content is None:
                self.remove(relpath)
            else:
                self.write(relpath, content)
        git("add", "-A", cwd=self.path)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.path)
        return self.head

    @property
    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.path).strip()

    def branch(self, name: str, sha: str | None = None) -> None:
        git("branch", "-f", name, sha or self.head, cwd=self.path)


@dataclass
class KnotRequest:
    method: str
    path: str
    query: dict[str, str]
    nsid: str | None


@dataclass
class _Fault:
    kind: Literal["status", "garbage", "json", "hang"]
    nsid: str | None = None
    status: int = 200
    body: Any = None


GATHER_SECONDS = 60.0


@dataclass
class Gathering:
    """`count` XRPC requests (for `nsid`, or any) held until they are all in flight; see gather()."""

    count: int
    nsid: str | None
    arrived: int = 0
    broken: bool = False  # the count never arrived: the held requests were answered anyway
    _complete: asyncio.Event | None = None  # made on the knot's loop, which every request runs on

    async def arrive(self) -> None:
        if self._complete is None:
            self._complete = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.count:
            self._complete.set()
            return
        try:
            await asyncio.wait_for(self._complete.wait(), GATHER_SECONDS)
        except TimeoutError:
            self.broken = True
            self._complete.set()


@dataclass
class _Answer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def _error(status: int, error: str, message: str) -> _Answer:
    return _Answer(status, {"error": error, "message": message})


class TestKnot:
    """A Tangled knot on 127.0.0.1:<port>; see the module docstring for its API."""

    __test__ = False  # not a test class, despite the name

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        repo_param: Literal["any", "did/name", "did"] = "any",
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="knot-")
        self.root = Path(root) if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)
        self.repo_param = repo_param
        self.repos: dict[tuple[str, str], GitRepo] = {}
        self.requests: list[KnotRequest] = []
        self.latency = 0.0
        self.blob_encoding: Literal["auto", "base64"] = "auto"
        self.in_flight = 0
        self.peak_in_flight = 0  # most XRPC requests answered at once: proves a client's concurrency
        self.gathering: Gathering | None = None
        self._faults: list[_Fault] = []
        self._stopping = False
        self._lock = threading.Lock()
        # Answers for a full commit id never change; caching them keeps benchmarks about the spindle.
        self._cache: dict[tuple[str, str, str, str], _Answer] = {}
        self.app = Starlette(
            routes=[
                Route(f"/xrpc/{TREE}", self._tree, methods=["GET"]),
                Route(f"/xrpc/{BLOB}", self._blob, methods=["GET"]),
                Route(f"/xrpc/{BRANCH}", self._branch, methods=["GET"]),
                *routes,
                Route("/{rest:path}", self._git_http, methods=["GET", "POST"]),
            ]
        )
        self.server: ServerThread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> TestKnot:
        self.server = ServerThread(self.app, timeout_graceful_shutdown=2).start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self.server is not None:
            self.server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> TestKnot:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.server is not None, "start the knot first"
        return self.server.url

    @property
    def host(self) -> str:
        assert self.server is not None, "start the knot first"
        return self.server.host

    # -- repositories ----------------------------------------------------------------------------

    def create_repo(self, did: str, name: str, *, object_format: str = "sha1") -> GitRepo:
        """A new empty git repo served as `<did>/<name>`."""
        repo = GitRepo.init(self.root / did / name, did, name, object_format=object_format)
        self.repos[(did, name)] = repo
        return repo

    def clone_url(self, repo: GitRepo) -> str:
        return f"{self.url}/{repo.did}/{repo.name}"

    # -- knobs -----------------------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        error: str = "InternalServerError",
        message: str = "the knot failed on purpose",
        body: Any = None,
        nsid: str | None = None,
    ) -> None:
        """Answer XRPC calls with `status` and `{"error","message"}` (or `body`, JSON or a str)."""
        payload = body if body is not None else {"error": error, "message": message}
        self._faults.append(_Fault("status", nsid, status, payload))

    def answer_garbage(self, body: str = "<html>definitely not json", *, nsid: str | None = None) -> None:
        self._faults.append(_Fault("garbage", nsid, 200, body))

    def answer_json(self, body: Any, *, status: int = 200, nsid: str | None = None) -> None:
        self._faults.append(_Fault("json", nsid, status, body))

    def hang(self, *, nsid: str | None = None) -> None:
        self._faults.append(_Fault("hang", nsid))

    def gather(self, count: int, *, nsid: str | None = None) -> Gathering:
        """Hold the next XRPC answers (for `nsid`, or any) until `count` requests are in flight."""
        self.gathering = Gathering(count, nsid)
        return self.gathering

    def reset(self) -> None:
        self._faults.clear()
        self.gathering = None
        self.latency = 0.0
        self.blob_encoding = "auto"

    def xrpc_requests(self, nsid: str | None = None) -> list[KnotRequest]:
        return [r for r in self.requests if r.nsid is not None and (nsid is None or r.nsid == nsid)]

    def clear_requests(self) -> None:
        self.requests.clear()

    def add_route(
        self, path: str, endpoint: Callable[..., Any], *, methods: Sequence[str] = ("GET",)
    ) -> None:
        self.app.router.routes.insert(-1, Route(path, endpoint, methods=list(methods)))

    def add_websocket_route(self, path: str, endpoint: Callable[..., Any]) -> None:
        self.app.router.routes.insert(-1, WebSocketRoute(path, endpoint))

    # -- XRPC ------------------------------------------------------------------------------------

    async def _tree(self, request: Request) -> Response:
        return await self._xrpc(request, TREE, self._tree_answer)

    async def _blob(self, request: Request) -> Response:
        return await self._xrpc(request, BLOB, self._blob_answer)

    async def _xrpc(
        self, request: Request, nsid: str, answer: Callable[[GitRepo, str, str], Any]
    ) -> Response:
        query = dict(request.query_params)
        self.requests.append(KnotRequest(request.method, request.url.path, query, nsid))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._xrpc_answer(request, nsid, answer, query)
        finally:
            self.in_flight -= 1

    async def _xrpc_answer(
        self, request: Request, nsid: str, answer: Callable[[GitRepo, str, str], Any], query: dict[str, str]
    ) -> Response:
        gathering = self.gathering
        if gathering is not None and gathering.nsid in (None, nsid):
            await gathering.arrive()
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = next((f for f in self._faults if f.nsid in (None, nsid)), None)
        if fault is not None:
            if fault.kind == "hang":
                while not self._stopping and fault in self._faults:
                    await asyncio.sleep(0.02)
            elif fault.kind == "garbage":
                return Response(fault.body, status_code=fault.status, media_type="application/json")
            elif fault.kind == "json":
                return JSONResponse(fault.body, status_code=fault.status)
            elif isinstance(fault.body, str):
                return Response(fault.body, status_code=fault.status, media_type="text/html")
            else:
                return JSONResponse(fault.body, status_code=fault.status)
        repo_or_error = self._find_repo(query.get("repo", ""))
        if isinstance(repo_or_error, _Answer):
            result = repo_or_error
        else:
            result = await answer(repo_or_error, query.get("ref", ""), query.get("path", ""))
        return JSONResponse(result.body, status_code=result.status)

    def _find_repo(self, param: str) -> GitRepo | _Answer:
        if not param or not param.startswith("did:"):
            return _error(400, "InvalidRequest", "missing or invalid repo parameter, expected a repo DID")
        if "/" in param:
            if self.repo_param == "did":
                return _error(400, "InvalidRequest", "invalid repo parameter, expected a repo DID")
            did, name = param.split("/", 1)
            repo = self.repos.get((did, name))
        else:
            if self.repo_param == "did/name":
                return _error(400, "InvalidRequest", "invalid repo format, expected 'did/repoName'")
            matches = [r for (did, _), r in self.repos.items() if did == param]
            repo = matches[0] if len(matches) == 1 else None
        if repo is None:
            return _error(400, "RepoNotFound", "failed to access repository")
        return repo

    async def _run_git(self, repo: GitRepo, *args: str) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=repo.path,
            env=git_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out

    async def _resolve(self, repo: GitRepo, ref: str) -> str | None:
        if not ref:
            ref = "HEAD"
        code, out = await self._run_git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        return out.decode().strip() if code == 0 else None

    async def _cached(
        self, kind: str, repo: GitRepo, ref: str, path: str, compute: Callable[[str], Any]
    ) -> _Answer:
        # A full commit id answered before needs no git process: its answer cannot have changed.
        hit = self._cache.get((kind, str(repo.path), ref, path))
        if hit is not None and self.blob_encoding == "auto":
            return hit
        sha = await self._resolve(repo, ref)
        if sha is None:
            return _error(404, "RefNotFound", "failed to access ref")
        key = (kind, str(repo.path), sha, path)
        cacheable = ref == sha and self.blob_encoding == "auto"
        result: _Answer = await compute(sha)
        if cacheable and result.status == 200:
            self._cache[key] = result
        return result

    async def _tree_answer(self, repo: GitRepo, ref: str, path: str) -> _Answer:
        path = path.strip("/")

        async def compute(sha: str) -> _Answer:
            if path:
                code, out = await self._run_git(repo, "cat-file", "-t", f"{sha}:{path}")
                if code != 0:
                    return _error(404, "PathNotFound", "failed to read repository tree")
                if out.strip() != b"tree":
                    return _Answer(200, self._tree_body(ref, path, []))
            code, out = await self._run_git(repo, "ls-tree", "-l", "-z", sha if not path else f"{sha}:{path}")
            if code != 0:
                return _error(404, "PathNotFound", "failed to read repository tree")
            files = []
            for line in out.split(b"\0"):
                if not line:
                    continue
                meta, _, name = line.partition(b"\t")
                mode, _kind, _obj, size = meta.split()
                files.append(
                    {
                        "name": name.decode(errors="replace"),
                        "mode": f"{int(mode, 8):07o}",
                        "size": int(size) if size != b"-" else 0,
                    }
                )
            return _Answer(200, self._tree_body(ref, path, files))

        return await self._cached("tree", repo, ref, path, compute)

    @staticmethod
    def _tree_body(ref: str, path: str, files: list[dict[str, Any]]) -> dict[str, Any]:
        dotdot = os.path.dirname(path) if path else None
        return {
            "ref": ref,
            "parent": path or None,
            "dotdot": dotdot or None,
            "files": files,
            "readme": {"filename": "", "contents": ""},
        }

    async def _blob_answer(self, repo: GitRepo, ref: str, path: str) -> _Answer:
        if not path:
            return _error(400, "InvalidRequest", "missing path parameter")

        async def compute(sha: str) -> _Answer:
            code, out = await self._run_git(repo, "cat-file", "blob", f"{sha}:{path}")
            if code != 0:
                return _error(404, "FileNotFound", "file not found at the specified path")
            try:
                text = out.decode("utf-8")
                is_binary = "\0" in text
            except UnicodeDecodeError:
                is_binary = True
            if is_binary or self.blob_encoding == "base64":
                content, encoding = base64.b64encode(out).decode(), "base64"
            else:
                content, encoding = text, "utf-8"
            return _Answer(
                200,
                {
                    "ref": ref,
                    "path": path,
                    "content": content,
                    "encoding": encoding,
                    "size": len(out),
                    "isBinary": is_binary,
                    "mimeType": "application/octet-stream" if is_binary else "text/plain; charset=utf-8",
                },
            )

        return await self._cached("blob", repo, ref, path, compute)

    async def _branch(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        return await self._xrpc(request, BRANCH, lambda repo, _ref, _path: self._branch_answer(repo, name))

    async def _branch_answer(self, repo: GitRepo, name: str) -> _Answer:
        if not name:
            return _error(400, "InvalidRequest", "missing name parameter")
        code, out = await self._run_git(
            repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}^{{commit}}"
        )
        if code != 0:
            return _error(404, "BranchNotFound", "branch not found")
        sha = out.decode().strip()
        _, when = await self._run_git(repo, "log", "-1", "--format=%aI", sha)
        _, head = await self._run_git(repo, "symbolic-ref", "--short", "HEAD")
        return _Answer(
            200,
            {
                "name": name,
                "hash": sha,
                "shortHash": sha[:7],
                "when": when.decode().strip(),
                "isDefault": head.decode().strip() == name,
            },
        )

    # -- git smart HTTP --------------------------------------------------------------------------

    def _repo_for_git_path(self, path: str) -> tuple[GitRepo, str] | None:
        """`/did/name/info/refs` → (repo, "/info/refs")."""
        parts = unquote(path).lstrip("/").split("/")
        for (did, name), repo in self.repos.items():
            if len(parts) >= 2 and parts[0] == unquote(did) and parts[1] in (name, name + ".git"):
                return repo, "/" + "/".join(parts[2:])
        return None

    async def _git_http(self, request: Request) -> Response:
        query = dict(request.query_params)
        self.requests.append(KnotRequest(request.method, request.url.path, query, None))
        found = self._repo_for_git_path(request.url.path)
        if found is None:
            return JSONResponse({"error": "RepoNotFound", "message": "no such repository"}, status_code=404)
        repo, rest = found
        body = await request.body()
        env = {
            **git_env(),
            "GIT_PROJECT_ROOT": str(repo.path),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": rest,
            "QUERY_STRING": request.url.query,
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": request.client.host if request.client else "127.0.0.1",
        }
        # Protocol v2 and gzip-compressed requests are announced in headers that CGI passes on.
        for header in ("git-protocol", "content-encoding"):
            if header in request.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = request.headers[header]
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            return Response(err or b"git http-backend failed", status_code=500, media_type="text/plain")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return Response(payload, status_code=status, headers=headers)


def iter_knot(root: Path, **kwargs: Any) -> Iterator[TestKnot]:
    with TestKnot(root, **kwargs) as knot:
        yield knot


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[TestKnot]:
    """A running test knot (current: accepts the repo DID and `<did>/<name>`)."""
    yield from iter_knot(tmp_path / "knot")


@pytest.fixture
def old_knot(tmp_path: Path) -> Iterator[TestKnot]:
    """A running older knot that accepts only `<did>/<name>` as `repo`."""
    yield from iter_knot(tmp_path / "old-knot", repo_param="did/name")


__all__ = ["BLOB", "BRANCH", "TREE", "GitRepo", "KnotRequest", "TestKnot", "git", "knot", "old_knot"]
