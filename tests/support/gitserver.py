"""A git server over real smart HTTP (`git http-backend` as CGI), as GitHub or a mirror serves
repositories: `<url>/<owner>/<repo>`, read only.

    with GitServer(tmp_path / "git") as server:
        repo = server.create_repo("actions", "hello")          # a GitRepo (tests/support/knot.py)
        sha = repo.commit({"action.yml": "..."}); repo.tag("v1")
        server.url                                             # http://127.0.0.1:<port>
        server.commands("fetch")                               # requests that fetched objects

Request log: `server.requests` holds a GitRequest(method, path, command) for every request;
`command` is the protocol v2 command of a POST (`ls-refs`, `fetch`) and None for the GET of
`info/refs`. `server.clear_requests()` empties it.

Knobs: `server.hold("fetch")` keeps every request with that command waiting until
`server.release()` (or the server stops); `server.held` counts the requests waiting.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.support.knot import GitRepo, git, git_env
from tests.support.servers import ServerThread

_COMMAND = re.compile(rb"command=([a-z-]+)")


@dataclass(frozen=True)
class GitRequest:
    method: str
    path: str
    command: str | None  # protocol v2: ls-refs, fetch ...


class ServedRepo(GitRepo):
    """A GitRepo that can also be tagged."""

    def tag(self, name: str, sha: str | None = None, *, annotated: bool = False) -> None:
        """Point the tag `name` at `sha` (default HEAD), moving it if it exists."""
        options = ["-a", "-m", name] if annotated else []
        git("tag", "-f", *options, name, sha or self.head, cwd=self.path)


class GitServer:
    """Repositories served at http://127.0.0.1:<port>/<owner>/<repo>; see the module docstring."""

    def __init__(self, root: Path | str | None = None) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="git-")
        self.root = Path(root) if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], ServedRepo] = {}
        self.requests: list[GitRequest] = []
        self.held = 0
        self._hold: str | None = None
        self._released = threading.Event()
        self._stopping = False
        self.app = Starlette(routes=[Route("/{rest:path}", self._serve, methods=["GET", "POST"])])
        self.server: ServerThread | None = None

    def start(self) -> GitServer:
        self.server = ServerThread(self.app, timeout_graceful_shutdown=2).start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._released.set()
        if self.server is not None:
            self.server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.server is not None, "start the server first"
        return self.server.url

    def create_repo(self, owner: str, name: str) -> ServedRepo:
        path = self.root / owner / name
        GitRepo.init(path, owner, name)
        repo = ServedRepo(path, owner, name)
        self.repos[(owner, name)] = repo
        return repo

    def commands(self, command: str) -> list[GitRequest]:
        return [r for r in self.requests if r.command == command]

    def clear_requests(self) -> None:
        self.requests.clear()

    def hold(self, command: str) -> None:
        self._hold = command
        self._released.clear()

    def release(self) -> None:
        self._hold = None
        self._released.set()

    async def _serve(self, request: Request) -> Response:
        body = await request.body()
        plain = gzip.decompress(body) if request.headers.get("content-encoding") == "gzip" else body
        match = _COMMAND.search(plain) if request.method == "POST" else None
        command = match.group(1).decode() if match else None
        self.requests.append(GitRequest(request.method, request.url.path, command))
        if command is not None and command == self._hold:
            self.held += 1
            try:
                while not self._released.is_set():
                    await asyncio.sleep(0.02)
            finally:
                self.held -= 1
        parts = unquote(request.url.path).strip("/").split("/")
        repo = self.repos.get((parts[0], parts[1].removesuffix(".git"))) if len(parts) > 2 else None
        if repo is None:
            return PlainTextResponse("Repository not found.", status_code=404)
        env = {
            **git_env(),
            "GIT_PROJECT_ROOT": str(repo.path),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": "/" + "/".join(parts[2:]),
            "QUERY_STRING": request.url.query,
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": request.client.host if request.client else "127.0.0.1",
        }
        for header in ("git-protocol", "content-encoding"):
            if header in request.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = request.headers[header]
        process = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate(body)
        head, separator, payload = out.partition(b"\r\n\r\n")
        if not separator:
            return PlainTextResponse(
                err.decode(errors="replace") or "git http-backend failed", status_code=500
            )
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return Response(payload, status_code=status, headers=headers)
