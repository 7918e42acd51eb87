"""The default engine: processes on this host, confined by app/engine/sandbox.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from sqlalchemy.engine import make_url

from app.config import Settings
from app.database import is_sqlite
from app.engine import sandbox
from app.engine.base import EngineUnavailable, ExecRequest, ExecResult, OutputSink, Workspace

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
DRAIN_TIMEOUT = 2.0  # how long to keep reading pipes a detached grandchild holds open
CHUNK = 65536
MAX_LINE_BYTES = 64 * 1024  # a longer line is cut into pieces here (the log sink truncates further)


class LocalEngine:
    name = "local"

    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings
        self.status: sandbox.SandboxStatus | None = None
        self.unavailable: str | None = None

    @property
    def work_dir(self) -> Path:
        return self.settings.data_dir / "work"

    async def start(self) -> None:
        if self.status is not None or self.unavailable is not None:
            return
        try:
            self.status = await sandbox.probe(self.settings.sandbox)
        except sandbox.SandboxUnavailable as exc:
            self.unavailable = str(exc)

    def describe(self) -> str:
        if self.status is None:
            return "not started"
        return self.status.describe()

    def check(self) -> None:
        if self.unavailable is not None:
            raise EngineUnavailable(self.unavailable)
        if self.status is None:
            raise EngineUnavailable("the engine was not started")

    def hidden_paths(self) -> list[Path]:
        """What steps must not see: the data directory, a SQLite database kept elsewhere, and the
        service user's home (its credentials and config)."""
        paths = [self.settings.data_dir.resolve()]
        home = Path.home().resolve()
        if home != Path("/"):
            paths.append(home)
        url = self.settings.resolved_database_url
        if is_sqlite(url):
            database = make_url(url).database
            if database and database != ":memory:":
                db = Path(database).resolve()
                paths += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        return paths

    async def create_workspace(self, *, run_id: int, job_key: str) -> Workspace:
        root = (self.work_dir / str(run_id) / job_key).resolve()
        if root.exists():
            await asyncio.to_thread(shutil.rmtree, root, True)
        workspace = Workspace(root=root, workspace=root / "workspace", temp=root / "temp", home=root / "home")
        for path in (workspace.workspace, workspace.temp, workspace.home):
            path.mkdir(parents=True, mode=0o755)
        return workspace

    async def destroy(self, *, run_id: int) -> None:
        await asyncio.to_thread(shutil.rmtree, self.work_dir / str(run_id), True)

    async def execute(
        self, workspace: Workspace, request: ExecRequest, *, output: OutputSink, cancel: asyncio.Event
    ) -> ExecResult:
        self.check()
        assert self.status is not None
        argv = sandbox.wrap(
            self.status,
            request.argv,
            writable=workspace.root,
            cwd=request.cwd,
            network=request.network,
            hidden=self.hidden_paths(),
        )
        limits = sandbox.Limits(
            memory_mb=self.settings.step_memory_mb,
            max_file_mb=self.settings.step_max_file_mb,
            max_processes=self.settings.step_max_processes,
            cpu_seconds=sandbox.cpu_seconds_for(request.timeout),
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=request.env,
                cwd=workspace.root if self.status.mode == "bwrap" else request.cwd,
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=sandbox.limits_preexec(limits),
            )
        except OSError as exc:
            return ExecResult(
                exit_code=127, error=f"could not start {request.argv[0]!r}: {exc.strerror or exc}"
            )
        readers = [
            asyncio.create_task(_pump(proc.stdout, "stdout", output)),
            asyncio.create_task(_pump(proc.stderr, "stderr", output)),
        ]
        waiter = asyncio.create_task(proc.wait())
        cancelled = asyncio.create_task(cancel.wait())
        result = ExecResult(exit_code=None)
        try:
            done, _ = await asyncio.wait(
                {waiter, cancelled}, timeout=max(request.timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                result.cancelled = cancelled in done
                result.timed_out = not result.cancelled
                await _terminate(proc.pid, waiter)
        finally:
            cancelled.cancel()
            if not waiter.done():
                await _terminate(proc.pid, waiter)
            # Whatever the step left running in its group goes too (daemons, `sleep &`).
            _killpg(proc.pid, signal.SIGKILL)
            _, pending = await asyncio.wait(readers, timeout=DRAIN_TIMEOUT)
            for reader in pending:
                reader.cancel()
        code = proc.returncode
        result.exit_code = 128 - code if code is not None and code < 0 else code
        return result


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _terminate(pgid: int, waiter: asyncio.Task[int]) -> None:
    """SIGTERM the group, give it KILL_GRACE seconds, then SIGKILL."""
    _killpg(pgid, signal.SIGTERM)
    done, _ = await asyncio.wait({waiter}, timeout=KILL_GRACE)
    if not done:
        _killpg(pgid, signal.SIGKILL)
        await waiter


async def _pump(stream: asyncio.StreamReader | None, name: str, output: OutputSink) -> None:
    if stream is None:
        return
    buffer = b""
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            output(name, _decode(line))
        while len(buffer) > MAX_LINE_BYTES:
            output(name, _decode(buffer[:MAX_LINE_BYTES]))
            buffer = buffer[MAX_LINE_BYTES:]
    if buffer:
        output(name, _decode(buffer))


def _decode(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")
