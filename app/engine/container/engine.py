"""Finding the container engine, or starting Podman's API service when there is none.

    handle = await connect(settings)   # SPINDLE_DOCKER_HOST, DOCKER_HOST, our own Podman, docker.sock
    handle.docker                      # a connected aiodocker.Docker
    handle.describe()                  # "Podman 4.3.1 (API 1.41) at unix:///...": for the service log
    await handle.close()               # closes the client; stops the Podman service we started

Errors: EngineNotFound (a subclass of app.engine.backend.EngineUnavailable): no engine answers,
and the message names what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import aiohttp

from app.config import Settings
from app.engine.backend import EngineUnavailable

log = logging.getLogger(__name__)

DOCKER_SOCKET = Path("/var/run/docker.sock")
START_TIMEOUT = 30.0  # seconds for our Podman service to answer /_ping
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL when stopping it
PING_TIMEOUT = aiohttp.ClientTimeout(total=5)
# sun_path holds 108 bytes with the terminating NUL: a longer socket path cannot be bound.
MAX_SOCKET_PATH = 107


class EngineNotFound(EngineUnavailable):
    """No container engine answers: raised by connect(), naming what is missing."""


@dataclass
class PodmanService:
    """The `podman system service` process the spindle started, and where it listens."""

    process: asyncio.subprocess.Process
    socket: Path
    log_path: Path

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                log.warning(
                    "podman service %d ignored SIGTERM for %.0f s: killing it", self.process.pid, grace
                )
                self.process.kill()
                await self.process.wait()
        self.socket.unlink(missing_ok=True)


@dataclass
class EngineHandle:
    """A connected engine: the API client, who answers, and the process to stop if it is ours."""

    docker: aiodocker.Docker
    url: str  # unix:///path.sock or tcp://host:port
    kind: str  # "podman" or "docker"
    version: str
    api_version: str
    service: PodmanService | None = None  # set when the spindle started Podman itself

    def describe(self) -> str:
        started = ", started by the spindle" if self.service else ""
        return f"{self.kind.capitalize()} {self.version} (API {self.api_version}) at {self.url}{started}"

    async def close(self) -> None:
        await self.docker.close()
        if self.service is not None:
            await self.service.stop()


async def connect(settings: Settings) -> EngineHandle:
    """The engine jobs run in: SPINDLE_DOCKER_HOST, else DOCKER_HOST, else a Podman service we
    start, else /var/run/docker.sock."""
    if settings.docker_host:
        return await _attach(settings.docker_host, source=f"SPINDLE_DOCKER_HOST={settings.docker_host}")
    if docker_host := os.environ.get("DOCKER_HOST"):
        return await _attach(docker_host, source=f"DOCKER_HOST={docker_host}")
    if shutil.which("podman"):
        return await _start_podman(settings.data_dir / "podman")
    if DOCKER_SOCKET.is_socket():
        return await _attach(f"unix://{DOCKER_SOCKET}", source=f"{DOCKER_SOCKET} (podman is not installed)")
    raise EngineNotFound(
        f"no container engine: podman is not installed and {DOCKER_SOCKET} does not exist: "
        "run scripts/setup or set SPINDLE_DOCKER_HOST"
    )


async def _attach(url: str, *, source: str) -> EngineHandle:
    """A client for an engine someone else runs; it must answer /_ping now."""
    docker = _client(url, source=source)
    try:
        reason = await _ping(docker)
        if reason is not None:
            raise EngineNotFound(f"{source} does not answer /_ping: {reason}")
        return await _identify(docker, url)
    except BaseException:
        await docker.close()
        raise


def _client(url: str, *, source: str) -> aiodocker.Docker:
    try:
        return aiodocker.Docker(url=url)
    except ValueError as exc:
        raise EngineNotFound(
            f"{source} is not an engine address (unix:///path or tcp://host:port): {exc}"
        ) from None


async def _ping(docker: aiodocker.Docker) -> str | None:
    """None when the engine answers /_ping with OK, else why not."""
    try:
        async with docker._query("_ping", versioned_api=False, timeout=PING_TIMEOUT) as response:
            body = (await response.text()).strip()
    except aiodocker.DockerError as exc:
        return exc.message
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    return None if body == "OK" else f"answered {body[:80]!r}"


async def _identify(docker: aiodocker.Docker, url: str, service: PodmanService | None = None) -> EngineHandle:
    version = await docker.version()
    components = [c.get("Name", "") for c in version.get("Components") or []]
    kind = "podman" if any("podman" in name.lower() for name in components) else "docker"
    return EngineHandle(
        docker=docker,
        url=url,
        kind=kind,
        version=str(version.get("Version", "?")),
        api_version=str(version.get("ApiVersion", "?")),
        service=service,
    )


def containers_conf(*, runc: bool, root: bool) -> str:
    """The containers.conf our Podman service runs with (passed in CONTAINERS_CONF)."""
    lines = [
        "[containers]",
        # Raising these above the host's own limits fails on some hosts; a job's own limits are
        # set per container.
        'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]',
    ]
    if root:
        # Container root maps to an unprivileged host range: the `containers` entry scripts/setup
        # adds to /etc/subuid and /etc/subgid. Rootless Podman is unprivileged already.
        lines.append('userns = "auto"')
    lines += ["", "[engine]"]
    if runc:
        # crun fails on cgroup v1 hybrid hosts, where runc works.
        lines.append('runtime = "runc"')
    lines += [
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',  # no journald needed
        # Podman keeps each finished exec session's conmon alive this many seconds (300 by
        # default) so that its exit code can be read; the spindle reads it at once, and a job
        # makes several execs per step: hundreds of idle conmons otherwise.
        "exit_command_delay = 5",
        "",
        "[network]",
        'network_backend = "netavark"',
        "",
    ]
    return "\n".join(lines)


def root_is_private() -> bool:
    """True when `/` does not propagate mounts (no `shared:N` tag in /proc/self/mountinfo)."""
    root_fields: list[str] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split(" - ", 1)[0].split()
            if fields[4] == "/":
                root_fields = fields  # the last mount on / is the one in effect
    return not any(field.startswith("shared:") for field in root_fields[6:])


def podman_command(socket: Path, *, private_root: bool, root: bool) -> list[str]:
    """argv of our Podman API service."""
    argv = ["podman", "system", "service", "--time=0", f"unix://{socket}"]
    if private_root and root and shutil.which("unshare"):
        # With `/` private, removing a container fails ("unlinkat .../userdata/shm: device or
        # resource busy") and its veth, bridge and netns leak: Podman expects mounts to propagate,
        # as they do on systemd hosts. A mount namespace of its own with shared propagation gives
        # it that without changing the host.
        argv = ["unshare", "--mount", "--propagation", "shared", "--", *argv]
    if shutil.which("setpriv"):
        # The service dies with the spindle, even on SIGKILL (parent-death signal).
        argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
    return argv


async def _start_podman(directory: Path) -> EngineHandle:
    """Start `podman system service` on <data_dir>/podman/podman.sock and wait for /_ping."""
    socket = directory / "podman.sock"
    if len(str(socket)) > MAX_SOCKET_PATH:
        raise EngineNotFound(
            f"cannot start podman: its socket path {socket} is longer than {MAX_SOCKET_PATH} bytes: "
            "set SPINDLE_DATA_DIR to a shorter path or set SPINDLE_DOCKER_HOST"
        )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = f"unix://{socket}"
    if socket.exists():
        stale = _client(url, source=str(socket))
        answered = await _ping(stale) is None
        await stale.close()
        if answered:
            raise EngineNotFound(
                f"a podman service already answers at {socket} (another spindle with this data dir?): "
                "stop it or set SPINDLE_DOCKER_HOST"
            )
        socket.unlink()
    root = os.geteuid() == 0
    conf = directory / "containers.conf"
    conf.write_text(containers_conf(runc=shutil.which("runc") is not None, root=root))
    argv = podman_command(socket, private_root=root_is_private(), root=root)
    log_path = directory / "service.log"
    started = time.monotonic()
    with log_path.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env={**os.environ, "CONTAINERS_CONF": str(conf)},
        )
    service = PodmanService(process=process, socket=socket, log_path=log_path)
    docker = aiodocker.Docker(url=url)
    try:
        await _wait_for_ping(docker, service)
        handle = await _identify(docker, url, service)
    except BaseException:
        await docker.close()
        await service.stop(grace=2)
        raise
    log.info("started %s in %.1f s (%s)", handle.describe(), time.monotonic() - started, " ".join(argv))
    return handle


async def _wait_for_ping(docker: aiodocker.Docker, service: PodmanService) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if service.process.returncode is not None:
            raise EngineNotFound(
                f"podman system service exited with {service.process.returncode}:\n{_tail(service.log_path)}"
            )
        if service.socket.exists() and await _ping(docker) is None:
            return
        if time.monotonic() > deadline:
            raise EngineNotFound(
                f"podman system service did not answer /_ping on {service.socket} within "
                f"{START_TIMEOUT:.0f} s:\n{_tail(service.log_path)}"
            )
        await asyncio.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of the service's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
