"""The container backend on a real Podman: isolation, limits, services, file commands, clean-up.

Each attack is what a hostile step would try; the backend is driven directly here (the runner's
workflows reproduce the same attacks end to end in tests/engine/test_isolation.py).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from app.config import Settings
from app.engine.backend import ExecRequest, ExecResult, FileCommandError, Job, JobSpec, Limits, ServiceSpec
from app.engine.container import firewall
from app.engine.container.backend import LABEL_DEPLOYMENT, ContainerBackend
from app.engine.container.options import parse_options
from tests.support.nettargets import Targets, net_targets  # noqa: F401  (fixture)
from tests.support.podman import PodmanEngine

CMD = "/__w/_temp/_runner_file_commands"
DIRS = (CMD, "/github/home", "/__w/demo/demo")


@pytest.fixture
async def backend(podman_engine: PodmanEngine, tmp_path: Path) -> AsyncIterator[ContainerBackend]:
    settings = Settings(data_dir=tmp_path, docker_host=podman_engine.url, runner_image=podman_engine.image)
    backend = ContainerBackend(
        settings=settings, instance_id=f"test-{tmp_path.name[-12:]}", deployment=tmp_path.name[-16:]
    )
    await backend.start()
    backend.check()
    yield backend
    await backend.close()


def spec(image: str, *, run_id: int = 1, **overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "run_id": run_id,
        "job_key": "001-build",
        "image": image,
        "limits": Limits(memory_mb=256, max_processes=128, cpus=1.0, disk_mb=200),
        "network": "filtered",
        "directories": DIRS,
    }
    values.update(overrides)
    return JobSpec(**values)


class Output:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


async def run(
    backend: ContainerBackend,
    job: Job,
    script: str,
    *,
    timeout: float = 60,
    cancel: asyncio.Event | None = None,
) -> tuple[ExecResult, Output]:
    output = Output()
    result = await backend.exec(
        job,
        ExecRequest(["bash", "-c", script], {"HOME": "/github/home"}, "/__w/demo/demo", timeout),
        output=output,
        cancel=cancel or asyncio.Event(),
    )
    return result, output


@pytest.fixture
async def job(backend: ContainerBackend, podman_engine: PodmanEngine) -> AsyncIterator[Job]:
    job = await backend.setup_job(spec(podman_engine.image), progress=lambda line: None)
    yield job
    await backend.destroy_job(job)


def probe(address: tuple[str, int]) -> str:
    host, port = address
    return f"timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}; head -n1 <&3' || echo unreachable"


async def test_steps_run_as_container_root_mapped_to_an_unprivileged_host_user(
    backend: ContainerBackend, job: Job
) -> None:
    result, output = await run(backend, job, "id -u; cat /proc/self/uid_map")

    assert result.exit_code == 0
    uid, mapping = output.text.splitlines()[0], output.text.splitlines()[1].split()
    assert uid == "0"
    assert mapping[0] == "0" and mapping[1] != "0"  # container uid 0 is not host uid 0


async def test_a_step_cannot_read_a_root_only_host_file_or_write_outside_its_container(
    backend: ContainerBackend, job: Job, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret\n")
    secret.chmod(0o600)

    result, output = await run(
        backend, job, f"cat {secret} 2>&1; cat /etc/shadow | head -c 100; touch {tmp_path}/planted 2>&1; ls /"
    )

    assert "host secret" not in output.text
    assert not (tmp_path / "planted").exists()


async def test_no_new_privileges_and_the_default_capability_set(backend: ContainerBackend, job: Job) -> None:
    result, output = await run(backend, job, "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status")

    fields = dict(line.split(":\t") for line in output.text.splitlines())
    assert fields["NoNewPrivs"] == "1"
    # CAP_SYS_ADMIN (bit 21), CAP_NET_ADMIN (12), CAP_SYS_MODULE (16) are not in the set.
    effective = int(fields["CapEff"], 16)
    assert not effective & (1 << 21) and not effective & (1 << 12) and not effective & (1 << 16)


async def test_the_network_reaches_a_public_address_and_nothing_of_this_host_or_its_lan(
    backend: ContainerBackend,
    job: Job,
    net_targets: Targets,  # noqa: F811
) -> None:
    checks = [("public", net_targets.public), ("private", net_targets.private), ("lan", net_targets.lan)]
    checks += [("loopback", net_targets.loopback)]
    if net_targets.host is not None:
        checks.append(("host", net_targets.host))
    script = "; ".join(f"echo {name}=$({probe(address)})" for name, address in checks)
    script += (
        "; echo metadata=$(timeout 3 bash -c 'exec 3<>/dev/tcp/169.254.169.254/80' 2>/dev/null && echo open)"
    )

    result, output = await run(backend, job, script)

    seen = dict(line.split("=", 1) for line in output.text.splitlines() if "=" in line)
    assert seen["public"] == "public"
    assert seen["private"] == "unreachable"
    assert seen["lan"] == "unreachable"
    assert seen["loopback"] == "unreachable"
    assert seen.get("host", "unreachable") == "unreachable"
    assert seen["metadata"] == ""


async def test_the_firewall_table_is_in_place_while_a_job_runs(job: Job) -> None:
    listed = subprocess.run(["nft", "list", "table", "inet", firewall.TABLE], capture_output=True, text=True)

    assert listed.returncode == 0
    assert f'iifname "{firewall.BRIDGE_PREFIX}*"' in listed.stdout


async def test_a_service_is_reachable_by_its_id_and_on_localhost(
    backend: ContainerBackend, podman_engine: PodmanEngine
) -> None:
    server = (
        "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 80)); s.listen()\n"
        "while True:\n c, _ = s.accept(); c.recv(1024)\n"
        " c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nhi'); c.close()"
    )
    service = ServiceSpec(
        id="web",
        image=podman_engine.image,
        command=("python3", "-c", server),
        options=parse_options(
            "--health-cmd \"bash -c 'exec 3<>/dev/tcp/127.0.0.1/80'\" "
            "--health-interval 1s --health-retries 30"
        ),
    )
    progress: list[str] = []
    job = await backend.setup_job(spec(podman_engine.image, services=(service,)), progress=progress.append)
    try:
        result, output = await run(
            backend,
            job,
            "for h in web localhost; do exec 3<>/dev/tcp/$h/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; "
            "head -n1 <&3; exec 3<&-; done",
        )
    finally:
        await backend.destroy_job(job)

    assert result.exit_code == 0, output.text
    assert output.text.count("HTTP/1.0 200 OK") == 2
    assert "service web is healthy" in progress


async def test_a_service_that_never_becomes_healthy_fails_the_job_setup_naming_it(
    backend: ContainerBackend, podman_engine: PodmanEngine
) -> None:
    from app.engine.backend import JobSetupError

    service = ServiceSpec(
        id="db",
        image=podman_engine.image,
        command=("sleep", "infinity"),
        options=parse_options("--health-cmd false --health-interval 100ms --health-retries 2"),
    )
    with pytest.raises(JobSetupError, match="service db is unhealthy"):
        await backend.setup_job(spec(podman_engine.image, services=(service,)), progress=lambda line: None)


async def test_memory_and_process_limits_hold_for_the_whole_job_and_are_named(
    backend: ContainerBackend, job: Job
) -> None:
    # Many processes, each under any per-process limit, together over the job's.
    memory, _ = await run(
        backend,
        job,
        "for i in 1 2 3 4; do python3 -c 'x = bytearray(100 << 20); import time; time.sleep(5)' & done; "
        "wait; exit 1",
    )
    processes, _ = await run(backend, job, "for i in $(seq 200); do sleep 10 & done; wait; exit 1")

    assert memory.limit is not None and "out of memory" in memory.limit and "256 MiB" in memory.limit
    assert processes.limit is not None and "process limit (128" in processes.limit


async def test_a_timed_out_step_leaves_no_process_behind(backend: ContainerBackend, job: Job) -> None:
    result, _ = await run(
        backend, job, "sleep 1000 & sleep 1000 & (setsid sleep 1000 &); sleep 1000", timeout=1
    )
    after, output = await run(backend, job, "ps -eo args= | grep -c '^sleep 1000' || true")

    assert result.timed_out and result.exit_code == 137
    assert output.text.strip() == "0"


async def test_cancel_stops_the_step_at_once(backend: ContainerBackend, job: Job) -> None:
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, cancel.set)

    result, _ = await run(backend, job, "sleep 1000", cancel=cancel)

    assert result.cancelled and not result.timed_out


async def test_file_commands_are_read_as_capped_regular_files_only(
    backend: ContainerBackend, job: Job
) -> None:
    await run(
        backend,
        job,
        f"echo out=1 > {CMD}/output; ln -s /etc/shadow {CMD}/env; mkfifo {CMD}/path; "
        f"head -c 3000 /dev/zero > {CMD}/summary",
    )
    paths = {name: f"{CMD}/{name}" for name in ("output", "env", "path")}

    files = await backend.read_files(job, paths, limit=1024)
    with pytest.raises(FileCommandError, match="summary is larger than 1 KiB"):
        await backend.read_files(job, {"summary": f"{CMD}/summary"}, limit=1024)

    # A symlink and a FIFO read as nothing: the service never follows or blocks on them.
    assert files == {"output": b"out=1\n", "env": b"", "path": b""}


async def test_output_without_newlines_is_cut_into_bounded_lines(backend: ContainerBackend, job: Job) -> None:
    result, output = await run(backend, job, "head -c 300000 /dev/zero | tr '\\0' x")

    assert result.exit_code == 0
    assert max(len(line) for _, line in output.lines) <= 64 * 1024
    assert sum(len(line) for _, line in output.lines) == 300000


async def test_destroying_a_job_removes_its_containers_network_and_processes(
    backend: ContainerBackend, podman_engine: PodmanEngine, docker: aiodocker.Docker
) -> None:
    job = await backend.setup_job(spec(podman_engine.image, run_id=77), progress=lambda line: None)
    await run(backend, job, "(setsid sleep 1000 &) ; nohup sleep 1000 >/dev/null 2>&1 &")

    await backend.destroy_job(job)

    label = f"{LABEL_DEPLOYMENT}={backend.deployment}"
    assert await docker.containers.list(all=True, filters={"label": [label]}) == []
    assert await docker.networks.list(filters={"label": [label]}) == []
    assert not [name for name in firewall.job_bridges() if job.name in name]


async def test_reap_removes_leftovers_of_runs_no_longer_running(
    backend: ContainerBackend, podman_engine: PodmanEngine, docker: aiodocker.Docker
) -> None:
    kept = await backend.setup_job(spec(podman_engine.image, run_id=5), progress=lambda line: None)
    gone = await backend.setup_job(spec(podman_engine.image, run_id=6), progress=lambda line: None)
    backend._jobs.clear()  # as after a crash: this process knows nothing of them

    async def running() -> set[int]:
        return {5}

    removed = await backend.reap(running=running)

    label = f"{LABEL_DEPLOYMENT}={backend.deployment}"
    left = await docker.containers.list(all=True, filters={"label": [label]})
    assert removed == 2  # the job container and its disk meter
    assert sorted(c.id for c in left) == sorted([kept.container_id, kept.meter or ""])
    assert gone.container_id not in [c.id for c in left]
    await backend.destroy_job(kept)


async def test_reap_never_removes_a_job_another_process_sets_up_while_it_looks(
    backend: ContainerBackend, podman_engine: PodmanEngine, docker: aiodocker.Docker
) -> None:
    started: list[Job] = []

    async def running() -> set[int]:
        # Another process claims run 9 and sets its job up between the listing and this answer.
        started.append(
            await backend.setup_job(spec(podman_engine.image, run_id=9), progress=lambda line: None)
        )
        return {9}

    await backend.reap(running=running)

    (job,) = started
    result, output = await run(backend, job, "echo still-here")
    await backend.destroy_job(job)
    assert (result.exit_code, output.text) == (0, "still-here")
