"""Every job in a container of Podman or Docker, driven through the Docker Engine API (aiodocker).

A job is:
    a network of its own      bridge named firewall.BRIDGE_PREFIX + random, so the host policy
                              (app/engine/container/firewall.py) applies to it
    the job container         its `container:` image or the runner image, kept alive by a
                              shell loop that reaps orphans; steps are `exec`s into it, as act and the
                              Forgejo runner do
    one container per service sharing the job container's network namespace (and, on Podman,
                              its user namespace): reachable on `localhost` at their ports and by
                              their service id, which the job container's /etc/hosts maps to
                              127.0.0.1, as GitHub's runners make them reachable
    two volumes               /__w (workspace, temp, file commands) and /github (home, event),
                              mounted at the same paths in the job container and in every step
                              container (Docker actions), so the paths a step's env names hold in both
    a meter container         the job's image, no network, the volumes read-only: measures them for
                              the disk limit with a `du` the job cannot replace
    step containers           one per Docker action step (steps.py), sharing the job container's
                              network namespace (and, on Podman, its user namespace) and volumes
    built images              Docker actions' Dockerfiles, built by builder.py: RUN in the job's
                              user namespace with no network

Isolation (docs/execution.md): container root maps to an unprivileged host uid (Podman's
`userns=auto`; Docker with userns-remap), no-new-privileges, the engine's default capabilities
and seccomp profile, no host path mounted, memory/processes/CPUs limited by the engine's
cgroups, the writable layer's size watched. Nothing a job controls is opened on the host: files
the step writes are read back through `exec` with byte caps, never through a host path.
Every container and network carries labels naming this spindle instance and the run, so that
a restarted spindle finds and removes what a crash left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import secrets
import tarfile
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork
from aiodocker.volumes import DockerVolume
from sqlalchemy.engine import make_url

from app.config import Settings
from app.engine.backend import (
    PROBED_COMMANDS,
    ContainerStep,
    EngineUnavailable,
    ExecRequest,
    ExecResult,
    FileCommandError,
    Job,
    JobSetupError,
    JobSpec,
    OutputSink,
    Progress,
    ServiceSpec,
    StepImageError,
)
from app.engine.container import build, builder, firewall, steps
from app.engine.container.options import ContainerOptions, HealthCheck

log = logging.getLogger(__name__)

LABEL_DEPLOYMENT = "dev.spindle.deployment"  # spindles sharing a database share it
LABEL_INSTANCE = "dev.spindle.instance"
LABEL_RUN = "dev.spindle.run"
LABEL_JOB = "dev.spindle.job"
LABEL_ROLE = "dev.spindle.role"  # job | service | meter | step | image
# The job's files live in volumes of the job, mounted here in the job container and in every step
# container: /__w holds the workspace, RUNNER_TEMP and the file commands, /github HOME and the event.
VOLUME_PATHS = ("/__w", "/github")
# The meter's own limits: it runs `du` every DISK_WATCH_INTERVAL, nothing else.
METER_MEMORY = 64 * 1024 * 1024
METER_PROCESSES = 16
# A `du` of the job's volumes that takes longer than this counts as over the disk limit: only
# millions of files take that long, and the job that made them is the one stopped.
METER_TIMEOUT = 120.0
# Largest build context (the action's directory) sent to the engine.
MAX_CONTEXT_BYTES = 512 * 1024 * 1024
ACTION_REPOSITORY = "localhost/spindle-action"
# PID 1 of a job container: waits forever and, being PID 1, reaps every orphan a step leaves
# (dash's `wait` reaps any child while it waits), so killed processes do not stay zombies.
KEEPALIVE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
MAX_LINE_BYTES = 64 * 1024  # a longer line is cut into pieces (the log sink truncates further)
KILL_DRAIN = 5.0  # seconds to keep reading output after the step's processes were killed
DISK_WATCH_INTERVAL = 5.0
EXIT_LIMIT = 137
# Reading a file command back: at most this long, whatever the job left there (a FIFO, say).
READ_TIMEOUT = 10.0
# The cgroup counters a container sees of itself (v1, then v2 paths).
_COUNTERS_SCRIPT = r"""
for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events \
         /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events; do
  [ -r "$f" ] && sed "s|^|$f |" "$f"
done 2>/dev/null
exit 0
"""
_PROBE_SCRIPT = (
    r"""
for c in "$@"; do command -v "$c" >/dev/null 2>&1 && echo "command $c"; done
"""
    + _COUNTERS_SCRIPT
)
_STAT_SCRIPT = (
    r"""
for f; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then wc -c < "$f"; else echo -1; fi
done 2>/dev/null
"""
    + _COUNTERS_SCRIPT
)
_READ_SCRIPT = 'f=$1; [ -f "$f" ] && [ ! -L "$f" ] || exit 3; exec head -c "$2" -- "$f"'
# Every process but PID 1 and this script, stopped first so that none forks away, then killed;
# `kill -KILL -1` would be the short way, but inside an exec session it signals nothing on Podman.
_KILL_SCRIPT = r"""
self=$$
for round in 1 2 3 4 5; do
  pids=""
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = 1 ] || [ "$pid" = "$self" ] || pids="$pids $pid"
  done
  [ -z "$pids" ] && exit 0
  kill -STOP $pids 2>/dev/null
  kill -KILL $pids 2>/dev/null
done
exit 0
"""
_NAME_SAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


def _name(*parts: object) -> str:
    return _NAME_SAFE.sub("-", "-".join(str(p) for p in parts)).strip("-")[:100]


def _tar(files: Mapping[str, bytes], directories: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        now = time.time()
        for directory in directories:
            info = tarfile.TarInfo(directory.lstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o777  # a job running as another user (options: --user) writes here too
            info.mtime = now
            archive.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o777
            info.mtime = now
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _Lines:
    """Splits a stream's chunks into lines, cut at MAX_LINE_BYTES."""

    def __init__(self, stream: str, output: OutputSink) -> None:
        self.stream = stream
        self.output = output
        self.pending = b""

    def feed(self, data: bytes) -> None:
        self.pending += data
        while True:
            index = self.pending.find(b"\n")
            if index < 0:
                break
            self._emit(self.pending[:index])
            self.pending = self.pending[index + 1 :]
        while len(self.pending) >= MAX_LINE_BYTES:
            self._emit(self.pending[:MAX_LINE_BYTES])
            self.pending = self.pending[MAX_LINE_BYTES:]

    def close(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = b""

    def _emit(self, raw: bytes) -> None:
        self.output(self.stream, raw.rstrip(b"\r").decode("utf-8", errors="replace"))


def deployment_id(settings: Settings) -> str:
    """What the containers of spindles sharing one database have in common: a digest of it."""
    url = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


Connect = Callable[[Settings], Awaitable[tuple[aiodocker.Docker, Callable[[], Awaitable[None]]]]]


async def _default_connect(settings: Settings) -> tuple[aiodocker.Docker, Callable[[], Awaitable[None]]]:
    from app.engine.container import engine

    handle = await engine.connect(settings)
    return handle.docker, handle.close


class ContainerBackend:
    name = "container"

    def __init__(
        self, *, settings: Settings, instance_id: str, deployment: str, connect: Connect | None = None
    ) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.deployment = deployment
        self._connect = connect or _default_connect
        self._closer: Callable[[], Awaitable[None]] | None = None
        self.docker: aiodocker.Docker | None = None
        self.unavailable: str | None = None
        self.engine_name = "?"
        self.podman = False
        self.userns = False
        self.firewall = firewall.Firewall()
        self._jobs: dict[str, Job] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.docker is not None or self.unavailable is not None:
            return
        try:
            self.docker, self._closer = await self._connect(self.settings)
            version = await self.docker.version()
        except (EngineUnavailable, DockerError, OSError, aiodocker.exceptions.DockerError) as exc:
            self.unavailable = f"the container engine is not available: {exc}"
            log.error("%s", self.unavailable)
            return
        components = [c.get("Name", "") for c in version.get("Components", []) or []]
        self.podman = any("podman" in name.lower() for name in components)
        self.engine_name = f"{'Podman' if self.podman else 'Docker'} {version.get('Version', '?')}"
        info = await self.docker.system.info()
        security = " ".join(str(item) for item in info.get("SecurityOptions", []) or [])
        # Podman maps container root through `userns=auto` (its containers.conf, written by the
        # spindle); Docker only with the daemon's userns-remap.
        self.userns = self.podman or "userns" in security
        if self.settings.job_network == "filtered":
            try:
                async with self.firewall.guard():
                    pass
            except firewall.FirewallUnavailable as exc:
                self.unavailable = (
                    f"jobs cannot be given a filtered network: {exc} "
                    "(or set SPINDLE_JOB_NETWORK=none to run jobs without a network)"
                )
                log.error("%s", self.unavailable)

    async def close(self) -> None:
        for job in list(self._jobs.values()):
            await self.destroy_job(job)
        if self.settings.job_network == "filtered" and self.unavailable is None and self.docker is not None:
            with contextlib.suppress(OSError):
                await self.firewall.remove_if_unused()
        if self.docker is not None:
            await self.docker.close()
            self.docker = None
        if self._closer is not None:
            await self._closer()
            self._closer = None

    def describe(self) -> str:
        network = (
            "the internet but no host, private or link-local address"
            if self.settings.job_network == "filtered"
            else "no network"
        )
        root = "container root mapped to an unprivileged host user" if self.userns else "container root"
        return f"a container per job on {self.engine_name} ({root}; network: {network})"

    def check(self) -> None:
        if self.unavailable is not None:
            raise EngineUnavailable(self.unavailable)
        if self.docker is None:
            raise EngineUnavailable("the container engine was not started")

    @property
    def _docker(self) -> aiodocker.Docker:
        if self.docker is None:
            raise EngineUnavailable("the container engine was not started")
        return self.docker

    def _labels(self, spec: JobSpec, role: str) -> dict[str, str]:
        return {
            LABEL_DEPLOYMENT: self.deployment,
            LABEL_INSTANCE: self.instance_id,
            LABEL_RUN: str(spec.run_id),
            LABEL_JOB: spec.job_key,
            LABEL_ROLE: role,
        }

    # -- setting a job up ---------------------------------------------------------------------

    async def setup_job(self, spec: JobSpec, *, progress: Progress) -> Job:
        docker = self._docker
        name = _name("spindle", spec.run_id, spec.job_key, secrets.token_hex(3))
        job = Job(spec=spec, container_id="", name=name)
        self._jobs[name] = job
        try:
            images = [self._ensure_image(spec.image, spec.credentials, progress)]
            images += [self._ensure_image(s.image, s.credentials, progress) for s in spec.services]
            # Every part is waited for, even when one fails, so that destroy_job below finds all
            # that was created (a failed pull must not race the volumes still being made).
            results = await asyncio.gather(
                *images, self._create_network(job), self._create_volumes(job), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            config = self._job_config(spec, network_mode=name if spec.network == "filtered" else "none")
            config["HostConfig"]["Mounts"] = self._mounts(job)
            container = await docker.containers.create(config, name=name)
            job.container_id = container.id
            async with self._network_guard(spec):
                await container.start()
            job.meter = await self._start_meter(job)
            for service in spec.services:
                job.services[service.id] = await self._start_service(job, service)
            await self.put_files(job, {}, directories=spec.directories)
            await self._probe(job, container)
            job.watch = asyncio.create_task(self._watch_disk(job), name=f"disk watch {name}")
            for service in spec.services:
                if service.options.health is not None:
                    await self._wait_healthy(job, service, service.options.health, progress)
        except BaseException:
            await self.destroy_job(job)
            raise
        return job

    async def _create_network(self, job: Job) -> None:
        if job.spec.network != "filtered":
            return
        bridge = firewall.BRIDGE_PREFIX + secrets.token_hex(6)
        network = await self._docker.networks.create(
            {
                "Name": job.name,
                "Driver": "bridge",
                "Labels": self._labels(job.spec, "job"),
                "Options": {"com.docker.network.bridge.name": bridge},
            }
        )
        job.network_id = network.id

    async def _create_volumes(self, job: Job) -> None:
        for path in VOLUME_PATHS:
            name = _name(job.name, path.strip("/").replace("/", "-") or "root")
            volume = await self._docker.volumes.create(
                {"Name": name, "Labels": self._labels(job.spec, "job")}
            )
            job.volumes[path] = volume.name

    def _mounts(self, job: Job, *, read_only: bool = False) -> list[dict[str, Any]]:
        return [
            {"Type": "volume", "Source": volume, "Target": path, "ReadOnly": read_only}
            for path, volume in job.volumes.items()
        ]

    def _joined(self, job: Job, host: dict[str, Any], *, network: bool = True) -> None:
        """`host` (a HostConfig) shares the job container's namespaces, as services do."""
        if network:
            host["NetworkMode"] = f"container:{job.container_id}"
        if self.podman:
            # Joining another container's network namespace needs its user namespace too (a
            # container in another one may not mount /sys for it); on the volumes, the same user
            # ids are the same owners.
            host["UsernsMode"] = f"container:{job.container_id}"

    async def _start_meter(self, job: Job) -> str:
        """A container of the job's image that sees the job's volumes read-only and nothing else:
        the disk watch runs `du` there, where the job cannot replace it."""
        host: dict[str, Any] = {
            "NetworkMode": "none",
            "Memory": METER_MEMORY,
            "MemorySwap": METER_MEMORY,
            "PidsLimit": METER_PROCESSES,
            "NanoCpus": int(0.5e9),
            "SecurityOpt": ["no-new-privileges"],
            "Mounts": self._mounts(job, read_only=True),
        }
        self._joined(job, host, network=False)
        config: dict[str, Any] = {
            "Image": job.spec.image,
            "Entrypoint": [],
            "Cmd": KEEPALIVE,
            "User": "0",
            "Labels": self._labels(job.spec, "meter"),
            "HostConfig": host,
        }
        try:
            container = await self._docker.containers.create(config, name=_name(job.name, "meter"))
            job.meter = container.id
            await container.start()
        except DockerError as exc:
            raise JobSetupError(f"the job's disk meter did not start: {exc.message}") from None
        if await self._volume_usage(job) is None:
            raise JobSetupError(
                f"the job's image {job.spec.image} has no `du`, which measures the job's disk use"
            )
        return container.id

    async def _volume_usage(self, job: Job) -> int | None:
        """Bytes in the job's volumes by the meter's `du`; None if it cannot be run at all.
        A `du` slower than METER_TIMEOUT counts as over any limit."""
        if job.meter is None:
            return 0
        container = self._docker.containers.container(job.meter)
        # `du` itself, no shell: the meter's image is read-only to the job anyway.
        argv = ["du", "-skx", *job.volumes]
        out: list[bytes] = []
        try:
            execution = await container.exec(cmd=argv, stdout=True, stderr=False, user="0")
            async with asyncio.timeout(METER_TIMEOUT):
                async with execution.start(detach=False) as stream:
                    while (message := await stream.read_out()) is not None:
                        if message.stream == 1 and sum(map(len, out)) < 16384:
                            out.append(message.data)
            code = (await execution.inspect()).get("ExitCode")
        except TimeoutError:
            return 1 << 62
        except DockerError:
            return None
        if code == 127:
            return None
        total = 0
        for line in b"".join(out).decode(errors="replace").splitlines():
            kib = line.split("\t", 1)[0].strip()
            if kib.isdigit():
                total += int(kib) * 1024
        return total

    def _network_guard(self, spec: JobSpec) -> contextlib.AbstractAsyncContextManager[None]:
        if spec.network == "filtered":
            return self.firewall.guard()
        return contextlib.nullcontext()

    def _limits(self, spec: JobSpec, options: ContainerOptions) -> dict[str, Any]:
        memory = spec.limits.memory_mb * 1024 * 1024
        if options.memory_bytes is not None:
            memory = min(memory, max(options.memory_bytes, 6 * 1024 * 1024))
        cpus = min(spec.limits.cpus, options.cpus) if options.cpus else spec.limits.cpus
        host: dict[str, Any] = {
            "Memory": memory,
            "MemorySwap": memory,  # no swap beyond the limit
            "PidsLimit": spec.limits.max_processes,
            "NanoCpus": int(cpus * 1e9),
            "SecurityOpt": ["no-new-privileges"],
            "Privileged": False,
            "ReadonlyRootfs": False,
        }
        if options.shm_size is not None:
            host["ShmSize"] = min(options.shm_size, memory)
        if options.tmpfs:
            host["Tmpfs"] = {
                path: opts for path, _, opts in (entry.partition(":") for entry in options.tmpfs)
            }
        return host

    def _job_config(self, spec: JobSpec, *, network_mode: str) -> dict[str, Any]:
        host = self._limits(spec, spec.options)
        host["NetworkMode"] = network_mode
        host["ExtraHosts"] = [f"{service.id}:127.0.0.1" for service in spec.services]
        if spec.network == "filtered":
            # Services bind their usual ports (80, 443 ...) as the container's root user would.
            host["Sysctls"] = {"net.ipv4.ip_unprivileged_port_start": "0"}
        env = {**spec.options.env, **spec.env}
        config: dict[str, Any] = {
            "Image": spec.image,
            "Entrypoint": [],
            "Cmd": KEEPALIVE,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": self._labels(spec, "job"),
            "HostConfig": host,
            "Hostname": spec.options.hostname or _name(spec.job_key)[:63] or "job",
        }
        if spec.options.user:
            config["User"] = spec.options.user
        if spec.options.workdir:
            config["WorkingDir"] = spec.options.workdir
        return config

    async def _start_service(self, job: Job, service: ServiceSpec) -> str:
        spec = job.spec
        host = self._limits(spec, service.options)
        self._joined(job, host)
        env = {**service.options.env, **service.env}
        config: dict[str, Any] = {
            "Image": service.image,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {**self._labels(spec, "service"), "dev.spindle.service": service.id},
            "HostConfig": host,
        }
        if service.options.entrypoint is not None:
            config["Entrypoint"] = [service.options.entrypoint]
        if service.command is not None:
            config["Cmd"] = list(service.command)
        if service.options.user:
            config["User"] = service.options.user
        if service.options.workdir:
            config["WorkingDir"] = service.options.workdir
        name = _name(job.name, service.id)
        try:
            container = await self._docker.containers.create(config, name=name)
            job.services[service.id] = container.id
            await container.start()
        except DockerError as exc:
            raise JobSetupError(
                f"service {service.id} ({service.image}) did not start: {exc.message}"
            ) from None
        return container.id

    async def _wait_healthy(
        self, job: Job, service: ServiceSpec, check: HealthCheck, progress: Progress
    ) -> None:
        """Health checks run here, through exec: Podman without systemd runs none by itself."""
        container = self._docker.containers.container(job.services[service.id])
        progress(f"waiting for service {service.id} to be healthy ({check.cmd})")
        loop = asyncio.get_running_loop()
        started = loop.time()
        failures = 0
        while True:
            state = (await container.show()).get("State", {})
            if not state.get("Running", False):
                logs = await self._tail_logs(container)
                raise JobSetupError(
                    f"service {service.id} exited with code {state.get('ExitCode')} before it was healthy"
                    + (f"; its last output:\n{logs}" if logs else "")
                )
            code = await self._health_probe(container.id, check)
            if code == 0:
                progress(f"service {service.id} is healthy")
                return
            if loop.time() - started >= check.start_period:
                failures += 1
                if failures >= max(check.retries, 1):
                    logs = await self._tail_logs(container)
                    raise JobSetupError(
                        f"service {service.id} is unhealthy: its health check failed {failures} times"
                        + (f"; its last output:\n{logs}" if logs else "")
                    )
            await asyncio.sleep(min(check.interval, 5.0) if failures == 0 else check.interval)

    async def _health_probe(self, container_id: str, check: HealthCheck) -> int | None:
        container = self._docker.containers.container(container_id)
        try:
            execution = await container.exec(cmd=["/bin/sh", "-c", check.cmd], stdout=True, stderr=True)
            async with asyncio.timeout(check.timeout):
                async with execution.start(detach=False) as stream:
                    while await stream.read_out() is not None:
                        pass
            return (await execution.inspect()).get("ExitCode")
        except (TimeoutError, DockerError):
            return None

    async def _tail_logs(self, container: Any) -> str:
        with contextlib.suppress(DockerError, ValueError):
            lines = await container.log(stdout=True, stderr=True, tail=20)
            return "".join(lines)[-4000:].rstrip()
        return ""

    async def _ensure_image(
        self, image: str, credentials: Mapping[str, str] | None, progress: Progress
    ) -> None:
        from app.engine.container import images

        try:
            await images.ensure_image(self._docker, image, credentials=credentials, progress=progress)
        except images.ImageError as exc:
            raise JobSetupError(str(exc)) from None

    # -- files --------------------------------------------------------------------------------

    async def put_files(
        self, job: Job, files: Mapping[str, bytes], *, directories: tuple[str, ...] = ()
    ) -> None:
        if not files and not directories:
            return
        container = self._docker.containers.container(job.container_id)
        await container.put_archive("/", _tar(files, directories))

    async def put_tar(self, job: Job, archive: Path) -> None:
        """A tar archive from the host, streamed (aiohttp reads the file off the event loop)."""
        container = self._docker.containers.container(job.container_id)
        with archive.open("rb") as stream:
            await container.put_archive("/", stream)

    async def read_files(self, job: Job, paths: Mapping[str, str], *, limit: int) -> dict[str, bytes]:
        """Regular files only, at most `limit` bytes each: FileCommandError names the first that
        is not. A missing file reads as empty."""
        names = list(paths)
        stat = await self._capture(job, ["/bin/sh", "-c", _STAT_SCRIPT, "sh", *paths.values()], limit=16384)
        lines = stat.decode(errors="replace").splitlines()
        sizes = [line.encode() for line in lines[: len(names)]]
        # The same look tells whether the step ran into a limit, even one it survived.
        hit = self._limit_hit(job, self._parse_counters("\n".join(lines[len(names) :])))
        if hit is not None and job.limit_hit is None:
            job.limit_hit = hit
        result: dict[str, bytes] = {}
        for index, name in enumerate(names):
            size = int(sizes[index]) if index < len(sizes) and sizes[index].lstrip(b"-").isdigit() else -1
            if size > limit:
                raise FileCommandError(f"{name} is larger than {limit // 1024} KiB")
            if size <= 0:
                result[name] = b""
                continue
            data = await self._capture(
                job, ["/bin/sh", "-c", _READ_SCRIPT, "sh", paths[name], str(limit + 1)], limit=limit + 1
            )
            if len(data) > limit:
                raise FileCommandError(f"{name} is larger than {limit // 1024} KiB")
            result[name] = data
        return result

    async def _capture(self, job: Job, argv: list[str], *, limit: int) -> bytes:
        """stdout of a short helper process in the job's container, at most `limit` bytes."""
        container = self._docker.containers.container(job.container_id)
        chunks: list[bytes] = []
        total = 0
        try:
            execution = await container.exec(cmd=argv, stdout=True, stderr=False, user="0")
            async with asyncio.timeout(READ_TIMEOUT):
                async with execution.start(detach=False) as stream:
                    while (message := await stream.read_out()) is not None:
                        if message.stream == 1 and total <= limit:
                            chunks.append(message.data)
                            total += len(message.data)
        except TimeoutError:
            raise FileCommandError("reading the step's file commands took too long") from None
        except DockerError as exc:
            raise FileCommandError(f"the step's file commands cannot be read: {exc.message}") from None
        return b"".join(chunks)[: limit + 1]

    # -- running processes --------------------------------------------------------------------

    async def exec(
        self, job: Job, request: ExecRequest, *, output: OutputSink, cancel: asyncio.Event
    ) -> ExecResult:
        if job.limit_hit is not None:
            return ExecResult(None, error=job.limit_hit, limit=job.limit_hit)
        container = self._docker.containers.container(job.container_id)
        try:
            execution = await container.exec(
                cmd=request.argv,
                stdout=True,
                stderr=True,
                environment=request.env,
                workdir=request.cwd,
                user=request.user or "",
            )
        except DockerError as exc:
            return ExecResult(None, error=f"the step could not be started: {exc.message}")
        lines = {1: _Lines("stdout", output), 2: _Lines("stderr", output)}

        async def pump() -> None:
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    lines.get(message.stream, lines[1]).feed(message.data)

        reader = asyncio.create_task(pump())
        cancelled = asyncio.create_task(cancel.wait())
        timed_out = was_cancelled = False
        try:
            done, _ = await asyncio.wait(
                {reader, cancelled}, timeout=max(request.timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
            if reader not in done:
                was_cancelled = cancelled in done
                timed_out = not was_cancelled
                await self._kill_processes(job)
                with contextlib.suppress(TimeoutError, DockerError):
                    await asyncio.wait_for(asyncio.shield(reader), KILL_DRAIN)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                log.warning("exec output of %s ended with %r", job.name, reader.exception())
        finally:
            cancelled.cancel()
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            for splitter in lines.values():
                splitter.close()
        exit_code: int | None = None
        with contextlib.suppress(DockerError):
            exit_code = (await execution.inspect()).get("ExitCode")
        result = ExecResult(exit_code, timed_out=timed_out, cancelled=was_cancelled)
        if job.limit_hit is not None:
            result.limit = job.limit_hit
        elif exit_code not in (0, None) and not timed_out and not was_cancelled:
            result.limit = await self.limit_hits(job)
        return result

    async def _kill_processes(self, job: Job) -> None:
        """Every process of the job container but its keep-alive (PID 1), as the step's end."""
        container = self._docker.containers.container(job.container_id)
        with contextlib.suppress(DockerError, TimeoutError):
            execution = await container.exec(cmd=["/bin/sh", "-c", _KILL_SCRIPT], user="0")
            async with asyncio.timeout(READ_TIMEOUT):
                async with execution.start(detach=False) as stream:
                    while await stream.read_out() is not None:
                        pass

    async def _probe(self, job: Job, container: Any) -> None:
        """The container's environment, the commands its image has, the cgroup counters' start."""
        info = await container.show()
        job.env = dict(
            item.partition("=")[::2] for item in (info.get("Config", {}).get("Env") or []) if "=" in item
        )
        try:
            text = (
                await self._capture(
                    job, ["/bin/sh", "-c", _PROBE_SCRIPT, "sh", *PROBED_COMMANDS], limit=16384
                )
            ).decode(errors="replace")
        except FileCommandError as exc:
            raise JobSetupError(f"the job's image {job.spec.image} cannot run commands: {exc}") from None
        job.commands = frozenset(
            line.split()[1]
            for line in text.splitlines()
            if line.startswith("command ") and len(line.split()) == 2
        )
        if "sh" not in job.commands:
            raise JobSetupError(f"the job's image {job.spec.image} has no /bin/sh: steps need a shell")
        job.counters = self._parse_counters(text)

    async def _counters(self, job: Job) -> dict[str, int]:
        try:
            text = (await self._capture(job, ["/bin/sh", "-c", _COUNTERS_SCRIPT], limit=8192)).decode()
        except FileCommandError:
            return {}
        return self._parse_counters(text)

    @staticmethod
    def _parse_counters(text: str) -> dict[str, int]:
        counters: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[2].isdigit():
                continue
            path, key, value = parts
            if key == "oom_kill":
                counters["memory"] = counters.get("memory", 0) + int(value)
            elif key == "max" and "pids" in path:
                counters["processes"] = counters.get("processes", 0) + int(value)
        return counters

    async def limit_hits(self, job: Job) -> str | None:
        """The memory or process limit, in words, when the job ran into it since the last look."""
        return self._limit_hit(job, await self._counters(job))

    @staticmethod
    def _limit_hit(job: Job, now: dict[str, int]) -> str | None:
        before, job.counters = job.counters, now
        limits = job.spec.limits
        if now.get("memory", 0) > before.get("memory", 0):
            return f"the job ran out of memory (limit {limits.memory_mb} MiB, SPINDLE_JOB_MEMORY_MB)"
        if now.get("processes", 0) > before.get("processes", 0):
            return f"the job reached its process limit ({limits.max_processes}, SPINDLE_JOB_MAX_PROCESSES)"
        return None

    async def _watch_disk(self, job: Job) -> None:
        """The writable layer's size, every few seconds: past the limit, the job is stopped."""
        limit = job.spec.limits.disk_mb * 1024 * 1024
        while True:
            await asyncio.sleep(DISK_WATCH_INTERVAL)
            used = await self._volume_usage(job) or 0
            # Writable layers: the job container's, its services' and its running step containers'.
            for container_id in [job.container_id, *job.services.values(), *job.steps]:
                with contextlib.suppress(DockerError):
                    info = await self._docker.containers.container(container_id).show(size="1")
                    used += int(info.get("SizeRw") or 0)
            if used > limit:
                job.limit_hit = (
                    f"the job wrote more than {job.spec.limits.disk_mb} MiB to disk (SPINDLE_JOB_DISK_MB)"
                )
                await self._kill_processes(job)
                await asyncio.gather(*(self._remove_container(step) for step in list(job.steps)))
                return

    # -- steps in containers of their own (Docker actions) -------------------------------------

    async def build_action_image(
        self, job: Job, context: Path, dockerfile: str, *, progress: Progress
    ) -> str:
        """The image of a Docker action's Dockerfile, built once per job and context content.

        Built by builder.py: RUN lines in the job's user namespace, with no network and the job's
        limits; the image carries the job's labels and goes with destroy_job or reap.
        An image larger than the job's disk limit is removed and fails the step."""
        limits = job.spec.limits
        max_bytes = min(MAX_CONTEXT_BYTES, limits.disk_mb * 1024 * 1024)
        archive = await asyncio.to_thread(build.context_archive, context, dockerfile, max_bytes=max_bytes)
        try:
            if archive.digest in job.images:
                progress(
                    f"using the image built for this action earlier in the job ({job.images[archive.digest]})"
                )
                return job.images[archive.digest]
            tag = f"{ACTION_REPOSITORY}:{_name(job.name).lower()[:100]}-{archive.digest[:12]}"
            progress(f"building {dockerfile} of the action ({archive.size >> 10} KiB of context)")
            # Recorded first: a build cancelled half-way still leaves its tag to remove.
            job.images[archive.digest] = tag
            try:
                idmap = await self._idmap(job)
                await self._builder(job, archive, dockerfile, idmap, progress=progress).build(tag)
            except BaseException:
                del job.images[archive.digest]
                await self._remove_image(tag)
                raise
        finally:
            archive.file.close()
        try:
            size = int((await self._docker.images.inspect(tag)).get("Size") or 0)
        except DockerError as exc:
            del job.images[archive.digest]
            raise StepImageError(
                f"cannot build {dockerfile}: the engine has no image after it: {exc.message}"
            ) from None
        if size > limits.disk_mb * 1024 * 1024:
            del job.images[archive.digest]
            await self._remove_image(tag)
            raise StepImageError(
                f"the image built from {dockerfile} is larger than the job's disk limit "
                f"({limits.disk_mb} MiB, SPINDLE_JOB_DISK_MB)"
            )
        return tag

    async def _idmap(self, job: Job) -> tuple[int, int, int]:
        """(host uid of container root, host gid of it, ids mapped) of the job's user namespace;
        (0, 0, 2**32 - 1) without one. Read with the shell's `read` alone (no other command)."""
        script = 'for f in /proc/1/uid_map /proc/1/gid_map; do read a b c < "$f"; echo "$a $b $c"; done'
        try:
            text = (await self._capture(job, ["/bin/sh", "-c", script], limit=1024)).decode()
        except FileCommandError as exc:
            raise StepImageError(f"the job's user namespace cannot be read: {exc}") from None
        rows = [line.split() for line in text.splitlines()]
        try:
            (uid_inside, uid_base, size), (_, gid_base, _) = [[int(v) for v in row] for row in rows[:2]]
        except ValueError:
            raise StepImageError(f"the job's user namespace cannot be read: {text[:200]!r}") from None
        if uid_inside != 0:
            raise StepImageError("the job's user namespace does not map its root")
        return uid_base, gid_base, size

    def _builder(
        self,
        job: Job,
        archive: build.ContextArchive,
        dockerfile: str,
        idmap: tuple[int, int, int],
        *,
        progress: Progress,
    ) -> builder.Builder:
        """RUN in the job's user namespace with no network and the job's limits; the containers
        that only take files and are committed (never started) outside it, so that the engine
        stores the owners the files have in the container (builder.py)."""
        run_host = self._limits(job.spec, ContainerOptions())
        self._joined(job, run_host, network=False)
        run_host["NetworkMode"] = "none"
        helper_host: dict[str, Any] = {"NetworkMode": "none"}
        if self.podman:
            helper_host["UsernsMode"] = "host"

        async def ensure(image: str) -> None:
            await self.prepare_step_image(job, image, progress=progress)

        return builder.Builder(
            self._docker,
            archive=archive,
            dockerfile_name=dockerfile,
            run_host=run_host,
            helper_host=helper_host,
            labels=self._labels(job.spec, "image"),
            idmap=idmap,
            max_bytes=job.spec.limits.disk_mb * 1024 * 1024,
            lines=_Lines,
            progress=progress,
            started=job.steps.add,
            finished=job.steps.discard,
            ensure_image=ensure,
            name=_name(job.name, "build"),
        )

    async def prepare_step_image(self, job: Job, image: str, *, progress: Progress) -> str:
        """A `docker://` image: the engine's own if it has it, else pulled (progress to the log)."""
        from app.engine.container import images

        try:
            await images.ensure_image(self._docker, image, credentials=None, progress=progress)
        except images.ImageError as exc:
            raise StepImageError(str(exc)) from None
        return image

    def step_config(self, job: Job, step: ContainerStep) -> dict[str, Any]:
        """The create body of a step container: the job's network (and, on Podman, user)
        namespace, its volumes at the same paths, the job's limits and security settings."""
        host = self._limits(job.spec, ContainerOptions())
        self._joined(job, host)
        host["Mounts"] = self._mounts(job)
        config: dict[str, Any] = {
            "Image": step.image,
            "Env": [f"{k}={v}" for k, v in step.env.items()],
            "WorkingDir": step.cwd,
            "Labels": self._labels(job.spec, "step"),
            "HostConfig": host,
        }
        if step.entrypoint is not None:
            config["Entrypoint"] = list(step.entrypoint)
        if step.args:
            config["Cmd"] = list(step.args)
        elif step.entrypoint is not None:
            config["Cmd"] = []  # as `docker run --entrypoint`: the image's CMD is not appended
        return config

    async def run_step_container(
        self, job: Job, step: ContainerStep, *, output: OutputSink, cancel: asyncio.Event
    ) -> ExecResult:
        if job.limit_hit is not None:
            return ExecResult(None, error=job.limit_hit, limit=job.limit_hit)
        result, state = await steps.run(
            self._docker,
            self.step_config(job, step),
            name=_name(job.name, "step", secrets.token_hex(3)),
            timeout=step.timeout,
            output=output,
            cancel=cancel,
            lines=_Lines,
            started=job.steps.add,
            finished=job.steps.discard,
        )
        if job.limit_hit is not None:
            result.limit = job.limit_hit
        elif state.get("OOMKilled"):
            result.limit = (
                f"the job ran out of memory (limit {job.spec.limits.memory_mb} MiB, SPINDLE_JOB_MEMORY_MB)"
            )
        elif result.exit_code == EXIT_LIMIT and not (result.timed_out or result.cancelled):
            # Podman in a user namespace does not always report OOMKilled, and the container's
            # cgroup counters are gone with it: a SIGKILL nobody here sent is most likely the OOM killer.
            result.limit = (
                "the step's container was killed (SIGKILL), most likely out of memory "
                f"(limit {job.spec.limits.memory_mb} MiB, SPINDLE_JOB_MEMORY_MB)"
            )
        return result

    # -- tearing down -------------------------------------------------------------------------

    async def destroy_job(self, job: Job) -> None:
        self._jobs.pop(job.name, None)
        if job.watch is not None:
            job.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.watch
        # Steps, services and the meter first: they share the job container's namespaces, and an
        # engine refuses to remove a container others depend on.
        dependents = [*job.steps, *job.services.values(), *([job.meter] if job.meter else [])]
        await asyncio.gather(*(self._remove_container(container_id) for container_id in dependents))
        if job.container_id:
            await self._remove_container(job.container_id)
        if job.network_id is not None:
            await self._remove_network(job.network_id)
        for volume in list(job.volumes.values()):
            await self._remove_volume(volume)
        for image in list(job.images.values()):
            await self._remove_image(image)

    async def _remove_container(self, container_id: str) -> None:
        """Killed (SIGKILL, every process in it) and removed with its anonymous volumes."""
        container = self._docker.containers.container(container_id)
        with contextlib.suppress(DockerError):
            await container.delete(force=True, v=True)

    async def _remove_network(self, network_id: str) -> None:
        with contextlib.suppress(DockerError):
            await DockerNetwork(self._docker, network_id).delete()

    async def _remove_volume(self, name: str) -> None:
        with contextlib.suppress(DockerError):
            await DockerVolume(self._docker, name).delete(force=True)

    async def _remove_image(self, image: str) -> None:
        with contextlib.suppress(DockerError):
            await self._docker.images.delete(image, force=True)

    async def reap(self, *, running: Callable[[], Awaitable[Collection[int]]]) -> int:
        docker = self._docker
        label = f"{LABEL_DEPLOYMENT}={self.deployment}"
        # What exists first, then which runs are running: a process claims a run (and commits)
        # before it creates anything for it, so whatever was listed for a live run is kept. The
        # other order removed the network of a run another process had just claimed.
        containers = await docker.containers.list(all=True, filters={"label": [label]})
        networks = await docker.networks.list(filters={"label": [label]})
        volumes = (await docker.volumes.list(filters={"label": [label]})).get("Volumes") or []
        images = await docker.images.list(filters={"label": [label]})
        keep = set(await running())

        def gone(labels: Mapping[str, str] | None) -> bool:
            run = (labels or {}).get(LABEL_RUN, "")
            return not (run.isdigit() and int(run) in keep)

        doomed = [c for c in containers if gone(c["Labels"])]
        # Steps, services and meters before the job containers they depend on.
        doomed.sort(key=lambda c: (c["Labels"] or {}).get(LABEL_ROLE) == "job")
        for container in doomed:
            await self._remove_container(container.id)
        for network in networks:
            if gone(network.get("Labels")):
                await self._remove_network(network["Id"])
        for volume in volumes:
            if gone(volume.get("Labels")):
                await self._remove_volume(volume["Name"])
        for image in images:
            if gone(image.get("Labels")):
                await self._remove_image(image["Id"])
        return len(doomed)
