"""Docker actions and `docker://` steps on a real Podman: step containers beside the job's, sharing
its network namespace and its files, built images, limits, clean-up.

The backend is driven directly, and through app/engine/actions/docker.py as the runner will call it.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from app.config import Settings
from app.engine.actions.definition import DockerRuns, parse_definition
from app.engine.actions.docker import run_docker_action, run_post
from app.engine.backend import (
    ContainerStep,
    ExecRequest,
    ExecResult,
    Job,
    JobSpec,
    Limits,
    ServiceSpec,
    StepImageError,
)
from app.engine.container.backend import LABEL_DEPLOYMENT, ContainerBackend
from app.engine.container.options import parse_options
from tests.support.nettargets import Targets, net_targets  # noqa: F401  (fixture)
from tests.support.podman import PodmanEngine

WORKSPACE = "/__w/demo/demo"
CMD = "/__w/_temp/_runner_file_commands"
DIRS = (CMD, "/github/home", "/github/workflow", WORKSPACE)
WAIT_SECONDS = 90.0  # a safety net against hangs, not a timing assertion


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
        "limits": Limits(memory_mb=256, max_processes=128, cpus=1.0, disk_mb=400),
        "network": "filtered",
        "directories": DIRS,
    }
    values.update(overrides)
    return JobSpec(**values)


@pytest.fixture
async def job(backend: ContainerBackend, podman_engine: PodmanEngine) -> AsyncIterator[Job]:
    job = await backend.setup_job(spec(podman_engine.image), progress=lambda line: None)
    yield job
    await backend.destroy_job(job)


class Output:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def env(**extra: str) -> dict[str, str]:
    return {
        "HOME": "/github/home",
        "GITHUB_WORKSPACE": WORKSPACE,
        "GITHUB_OUTPUT": f"{CMD}/output",
        "GITHUB_STATE": f"{CMD}/state",
        "RUNNER_TEMP": "/__w/_temp",
        **extra,
    }


async def in_job(backend: ContainerBackend, job: Job, script: str) -> tuple[ExecResult, Output]:
    output = Output()
    result = await backend.exec(
        job, ExecRequest(["bash", "-c", script], env(), WORKSPACE, 60), output=output, cancel=asyncio.Event()
    )
    return result, output


async def in_step(
    backend: ContainerBackend,
    job: Job,
    script: str,
    *,
    image: str,
    timeout: float = 60,
    cancel: asyncio.Event | None = None,
) -> tuple[ExecResult, Output]:
    output = Output()
    step = ContainerStep(
        image=image, entrypoint=["bash", "-c"], args=[script], env=env(), cwd=WORKSPACE, timeout=timeout
    )
    result = await backend.run_step_container(job, step, output=output, cancel=cancel or asyncio.Event())
    return result, output


def probe(address: tuple[str, int]) -> str:
    host, port = address
    return f"timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port}; head -n1 <&3' 2>/dev/null || echo unreachable"


def write_action(directory: Path, image: str, action_yml: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "action.yml").write_text(textwrap.dedent(action_yml))
    (directory / "Dockerfile").write_text(
        f"FROM {image}\nCOPY entrypoint.sh /entrypoint.sh\nRUN chmod +x /entrypoint.sh\n"
        'ENTRYPOINT ["/entrypoint.sh"]\n'
    )
    (directory / "entrypoint.sh").write_text(
        textwrap.dedent(
            """\
            #!/bin/bash
            echo "phase=${PHASE:-main} who=$INPUT_WHO greeting=$GREETING args=$*"
            echo "greeting=hello $INPUT_WHO" >> "$GITHUB_OUTPUT"
            echo "seen=$1" >> "$GITHUB_STATE"
            """
        )
    )
    return directory


async def test_a_docker_action_built_from_its_dockerfile_reads_inputs_and_writes_github_output(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    action = write_action(
        tmp_path / "action",
        podman_engine.image,
        """
        name: greet
        inputs:
          who: {default: world}
        runs:
          using: docker
          image: Dockerfile
          args: ["${{ inputs.who }}", "second"]
          env: {GREETING: "from action.yml"}
        """,
    )
    definition = parse_definition((action / "action.yml").read_text(), action="me/greet@v1")
    assert isinstance(definition.runs, DockerRuns)
    output, progress = Output(), Output()

    run = await run_docker_action(
        backend=backend,
        job=job,
        runs=definition.runs,
        action_dir=action,
        env=env(INPUT_WHO="octocat", GREETING="from the step"),
        cwd=WORKSPACE,
        timeout=120,
        output=output,
        cancel=asyncio.Event(),
        progress=lambda line: progress("progress", line),
        interpolate=lambda text: text.replace("${{ inputs.who }}", "octocat"),
    )
    files = await backend.read_files(job, {"output": f"{CMD}/output"}, limit=1024)

    assert run.result.exit_code == 0, output.text + progress.text
    assert "phase=main who=octocat greeting=from action.yml args=octocat second" in output.text
    # Written by the step container, read back through the job container.
    assert files["output"] == b"greeting=hello octocat\n"
    assert run.post is None


async def test_pre_and_post_entrypoints_run_with_the_same_arguments_and_the_image_is_built_once(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    action = write_action(
        tmp_path / "action", podman_engine.image, "runs: {using: docker, image: Dockerfile}"
    )
    (action / "phase.sh").write_text('#!/bin/sh\necho "phase=$0 args=$*"\n')
    (action / "Dockerfile").write_text(
        (action / "Dockerfile").read_text()
        + "COPY phase.sh /pre.sh\nCOPY phase.sh /post.sh\nRUN chmod +x /pre.sh /post.sh\n"
    )
    runs = DockerRuns(image="Dockerfile", args=("a b",), pre_entrypoint="/pre.sh", post_entrypoint="/post.sh")
    output, progress = Output(), Output()

    def go() -> Any:
        return run_docker_action(
            backend=backend,
            job=job,
            runs=runs,
            action_dir=action,
            env=env(),
            cwd=WORKSPACE,
            timeout=120,
            output=output,
            cancel=asyncio.Event(),
            progress=lambda line: progress("progress", line),
        )

    first = await go()
    second = await go()
    assert first.post is not None
    post = await run_post(
        backend, job, first, env=env(STATE_seen="x"), timeout=30, output=output, cancel=asyncio.Event()
    )

    assert first.result.exit_code == 0 and second.result.exit_code == 0, output.text
    assert post is not None and post.exit_code == 0
    assert first.image == second.image
    assert progress.text.count("STEP 1/") == 1  # built once for the job
    assert output.text.splitlines() == [
        "phase=/pre.sh args=a b",
        "phase=main who= greeting= args=a b",
        "phase=/pre.sh args=a b",
        "phase=main who= greeting= args=a b",
        "phase=/post.sh args=a b",
    ]


async def test_a_docker_image_step_runs_with_its_entrypoint_and_args(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine
) -> None:
    output = Output()

    run = await run_docker_action(
        backend=backend,
        job=job,
        runs=None,
        image=f"docker://{podman_engine.image}",
        with_entrypoint="/bin/echo",
        with_args="hello 'big world' $HOME",
        env=env(),
        cwd=WORKSPACE,
        timeout=60,
        output=output,
        cancel=asyncio.Event(),
        progress=lambda line: None,
    )

    assert run.result.exit_code == 0
    assert output.lines == [("stdout", "hello big world $HOME")]


async def test_a_docker_step_naming_no_image_is_refused(backend: ContainerBackend, job: Job) -> None:
    with pytest.raises(StepImageError, match="does not name an image"):
        await run_docker_action(
            backend=backend,
            job=job,
            runs=None,
            image="docker://Not An Image",
            env=env(),
            cwd=WORKSPACE,
            timeout=60,
            output=Output(),
            cancel=asyncio.Event(),
            progress=lambda line: None,
        )


async def test_a_step_container_and_the_job_see_each_others_files(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine
) -> None:
    await in_job(backend, job, "echo from-job > job.txt; mkdir -p sub; echo home > $HOME/h")

    result, output = await in_step(
        backend,
        job,
        "cat job.txt $HOME/h; echo from-step > sub/step.txt; id -u; stat -c %u job.txt",
        image=podman_engine.image,
    )
    after, seen = await in_job(backend, job, "cat sub/step.txt; echo more >> sub/step.txt && echo writable")

    assert result.exit_code == 0, output.text
    assert output.text.splitlines() == ["from-job", "home", "0", "0"]
    assert seen.text.splitlines() == ["from-step", "writable"]


async def test_a_step_container_reaches_a_service_on_localhost(
    backend: ContainerBackend, podman_engine: PodmanEngine
) -> None:
    server = (
        "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 80)); s.listen()\n"
        "while True:\n c, _ = s.accept(); c.sendall(b'service says hi\\n'); c.close()"
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
    job = await backend.setup_job(spec(podman_engine.image, services=(service,)), progress=lambda line: None)
    try:
        result, output = await in_step(backend, job, probe(("127.0.0.1", 80)), image=podman_engine.image)
    finally:
        await backend.destroy_job(job)

    assert result.exit_code == 0, output.text
    assert output.text == "service says hi"


async def test_a_step_container_reaches_the_internet_but_not_the_host_or_its_lan(
    backend: ContainerBackend,
    job: Job,
    podman_engine: PodmanEngine,
    net_targets: Targets,  # noqa: F811
) -> None:
    checks = [("public", net_targets.public), ("private", net_targets.private), ("lan", net_targets.lan)]
    checks += [("loopback", net_targets.loopback)]
    if net_targets.host is not None:
        checks.append(("host", net_targets.host))
    script = "; ".join(f"echo {name}=$({probe(address)})" for name, address in checks)

    result, output = await in_step(backend, job, script, image=podman_engine.image)

    seen = dict(line.split("=", 1) for line in output.text.splitlines() if "=" in line)
    assert seen.pop("public") == "public"
    assert seen and set(seen.values()) == {"unreachable"}, seen


async def test_a_builds_run_lines_reach_no_network_at_all(
    backend: ContainerBackend,
    job: Job,
    podman_engine: PodmanEngine,
    tmp_path: Path,
    net_targets: Targets,  # noqa: F811
) -> None:
    checks = [
        ("public", net_targets.public),
        ("private", net_targets.private),
        ("loopback", net_targets.loopback),
    ]
    if net_targets.host is not None:
        checks.append(("host", net_targets.host))
    probes = " && ".join(f"echo probe-{name}=$({probe(address)})" for name, address in checks)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {podman_engine.image}\nRUN {probes}\n")
    progress: list[str] = []

    await backend.build_action_image(job, context, "Dockerfile", progress=progress.append)

    seen = dict(line.split("=", 1) for line in progress if line.startswith("probe-"))
    assert {seen[f"probe-{name}"] for name, _ in checks} == {"unreachable"}, progress


async def test_a_failed_build_names_its_last_lines(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {podman_engine.image}\nRUN echo the-reason-it-broke && exit 3\n"
    )

    with pytest.raises(StepImageError) as failure:
        await backend.build_action_image(job, tmp_path, "Dockerfile", progress=lambda line: None)

    assert "cannot build Dockerfile: RUN on line 2 failed (exit code 3)" in str(failure.value)
    assert "the-reason-it-broke" in str(failure.value)
    assert job.images == {}


async def test_a_dockerfile_outside_the_action_directory_is_refused(
    backend: ContainerBackend, job: Job, tmp_path: Path
) -> None:
    (tmp_path / "action").mkdir()
    (tmp_path / "action" / "Dockerfile").symlink_to("/etc/passwd")

    with pytest.raises(StepImageError, match="not a regular file"):
        await backend.build_action_image(job, tmp_path / "action", "Dockerfile", progress=lambda line: None)
    with pytest.raises(StepImageError, match="not a path inside"):
        await backend.build_action_image(
            job, tmp_path / "action", "../Dockerfile", progress=lambda line: None
        )


async def test_the_jobs_memory_limit_applies_to_a_step_container(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine
) -> None:
    result, output = await in_step(
        backend, job, "python3 -c 'x = bytearray(400 << 20); print(len(x))'", image=podman_engine.image
    )

    assert result.exit_code == 137, output.text
    assert result.limit is not None and "out of memory" in result.limit and "256 MiB" in result.limit


async def test_a_step_container_is_killed_on_timeout_and_on_cancel(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, docker: aiodocker.Docker
) -> None:
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, cancel.set)

    timed_out, _ = await in_step(
        backend, job, "echo started; sleep 1000", image=podman_engine.image, timeout=1
    )
    cancelled, _ = await in_step(backend, job, "sleep 1000", image=podman_engine.image, cancel=cancel)

    assert timed_out.timed_out and timed_out.exit_code == 137
    assert cancelled.cancelled and not cancelled.timed_out
    label = [f"{LABEL_DEPLOYMENT}={backend.deployment}", "dev.spindle.role=step"]
    assert await docker.containers.list(all=True, filters={"label": label}) == []
    assert job.steps == set()


async def test_writing_past_the_disk_limit_into_the_workspace_stops_the_job(
    backend: ContainerBackend, podman_engine: PodmanEngine
) -> None:
    job = await backend.setup_job(
        spec(podman_engine.image, limits=Limits(memory_mb=256, max_processes=128, cpus=1.0, disk_mb=64)),
        progress=lambda line: None,
    )
    try:
        # In the volume, not the writable layer; then wait to be stopped.
        result, output = await in_step(
            backend,
            job,
            "head -c 100M /dev/zero > big.bin; sleep 300",
            image=podman_engine.image,
            timeout=120,
        )
        after, _ = await in_job(backend, job, "true")
    finally:
        await backend.destroy_job(job)

    assert not result.timed_out, output.text
    assert result.limit is not None and "more than 64 MiB to disk" in result.limit
    assert after.error is not None and "SPINDLE_JOB_DISK_MB" in after.error


async def resources(docker: aiodocker.Docker, deployment: str) -> dict[str, list[str]]:
    label = {"label": [f"{LABEL_DEPLOYMENT}={deployment}"]}
    return {
        "containers": [c.id for c in await docker.containers.list(all=True, filters=label)],
        "volumes": [v["Name"] for v in (await docker.volumes.list(filters=label)).get("Volumes") or []],
        "images": [i["Id"] for i in await docker.images.list(filters=label)],
        "networks": [n["Id"] for n in await docker.networks.list(filters=label)],
    }


async def start_with_a_step_and_an_image(
    backend: ContainerBackend, podman_engine: PodmanEngine, tmp_path: Path, run_id: int
) -> tuple[Job, asyncio.Task[Any]]:
    job = await backend.setup_job(spec(podman_engine.image, run_id=run_id), progress=lambda line: None)
    context = tmp_path / f"ctx{run_id}"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {podman_engine.image}\nRUN echo {run_id} > /built\n")
    await backend.build_action_image(job, context, "Dockerfile", progress=lambda line: None)
    await in_job(backend, job, "echo data > file")
    step = asyncio.create_task(in_step(backend, job, "sleep 1000", image=podman_engine.image, timeout=300))
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not job.steps:
        assert asyncio.get_running_loop().time() < deadline, "the step container never started"
        await asyncio.sleep(0.05)
    return job, step


async def test_destroying_a_job_removes_its_step_containers_volumes_and_built_images(
    backend: ContainerBackend, podman_engine: PodmanEngine, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    job, step = await start_with_a_step_and_an_image(backend, podman_engine, tmp_path, run_id=31)
    before = await resources(docker, backend.deployment)

    await backend.destroy_job(job)
    await step

    assert len(before["containers"]) == 3  # the job's, its meter, the step's
    assert len(before["volumes"]) == 2 and len(before["images"]) == 1
    assert await resources(docker, backend.deployment) == {
        "containers": [],
        "volumes": [],
        "images": [],
        "networks": [],
    }


async def test_reap_removes_step_containers_volumes_and_images_of_a_crashed_job(
    backend: ContainerBackend, podman_engine: PodmanEngine, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    kept = await backend.setup_job(spec(podman_engine.image, run_id=41), progress=lambda line: None)
    crashed, step = await start_with_a_step_and_an_image(backend, podman_engine, tmp_path, run_id=42)
    backend._jobs.clear()  # as after a crash: this process knows nothing of them

    async def running() -> set[int]:
        return {41}

    await backend.reap(running=running)
    await step
    left = await resources(docker, backend.deployment)

    assert sorted(left["containers"]) == sorted([kept.container_id, kept.meter or ""])
    assert sorted(left["volumes"]) == sorted(kept.volumes.values())
    assert left["images"] == []
    await backend.destroy_job(kept)
    await backend.destroy_job(crashed)


async def test_a_builds_run_lines_run_in_the_jobs_user_namespace(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {podman_engine.image}\nRUN echo uid_map=$(cat /proc/self/uid_map)\n"
    )
    progress: list[str] = []

    await backend.build_action_image(job, tmp_path, "Dockerfile", progress=progress.append)
    _, seen = await in_job(backend, job, "echo uid_map=$(cat /proc/self/uid_map)")

    [build_map] = [line for line in progress if line.startswith("uid_map=")]
    assert build_map.split() != ["uid_map=0", "0", "4294967295"], build_map
    assert build_map == seen.text  # the job's own mapping: container root is not host root


async def test_files_made_by_run_keep_their_owners_in_the_actions_container(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho tool-from-the-context\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.txt").write_text("data\n")
    (tmp_path / "Dockerfile").write_text(
        textwrap.dedent(
            f"""\
            ARG GREETING=hello
            ARG BASE={podman_engine.image}
            FROM $BASE
            # comments and continuations
            ARG GREETING
            ENV APP_HOME=/opt/app \\
                MODE="built here"
            WORKDIR $APP_HOME
            COPY tool.sh ./bin/
            COPY tool.sh /usr/local/bin
            COPY --chown=1000:1000 sub /opt/data/
            RUN chmod +x bin/tool.sh && echo "$GREETING" > greeting \\
                && useradd -m -u 1000 alice && runuser -u alice -- sh -c 'echo mine > /home/alice/own'
            RUN rm /etc/issue
            ENTRYPOINT ["/opt/app/bin/tool.sh"]
            """
        )
    )
    image = await backend.build_action_image(job, tmp_path, "Dockerfile", progress=lambda line: None)
    script = (
        'echo "$MODE $APP_HOME $(pwd) $(cat greeting)"; ls /etc/issue 2>&1 | grep -c "No such"; '
        "test -f /usr/local/bin/tool.sh && echo copied-into-the-directory; "
        "stat -c '%U %u' greeting /home/alice/own /opt/data/data.txt; "
        "echo more >> greeting && runuser -u alice -- sh -c 'echo more >> /home/alice/own' && echo writable"
    )
    output = Output()
    step = ContainerStep(
        image=image, entrypoint=["bash", "-c"], args=[script], env=env(), cwd="/opt/app", timeout=60
    )
    scripted = await backend.run_step_container(job, step, output=output, cancel=asyncio.Event())
    plain, tool = await in_step(backend, job, "true", image=image)
    default = Output()
    entry = await backend.run_step_container(
        job,
        ContainerStep(image=image, entrypoint=None, args=[], env=env(), cwd=WORKSPACE, timeout=60),
        output=default,
        cancel=asyncio.Event(),
    )

    assert scripted.exit_code == 0, output.text
    assert output.text.splitlines() == [
        "built here /opt/app /opt/app hello",
        "1",
        "copied-into-the-directory",
        "root 0",
        "alice 1000",
        "alice 1000",
        "writable",
    ]
    assert plain.exit_code == 0, tool.text
    assert entry.exit_code == 0 and default.text == "tool-from-the-context"


async def test_an_unsupported_dockerfile_instruction_is_refused_by_name(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {podman_engine.image}\nRUN true\nONBUILD RUN true\n")

    with pytest.raises(StepImageError, match="ONBUILD on line 3 is not supported"):
        await backend.build_action_image(job, tmp_path, "Dockerfile", progress=lambda line: None)
    assert job.images == {}


async def test_copy_refuses_urls_and_other_stages(
    backend: ContainerBackend, job: Job, podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.txt").write_text("a wildcard does not reach into sub/\n")
    for line, message in [
        ("ADD https://example.com/x /x", "ADD on line 2: URLs are not supported"),
        ("COPY --from=builder /x /x", "COPY on line 2: copying from another stage"),
        ("COPY missing.txt /x", "COPY on line 2: the action's directory has no missing.txt"),
        ("COPY *.txt /x/", r"COPY on line 2: the action's directory has no \*\.txt"),
    ]:
        (tmp_path / "Dockerfile").write_text(f"FROM {podman_engine.image}\n{line}\n")
        with pytest.raises(StepImageError, match=message):
            await backend.build_action_image(job, tmp_path, "Dockerfile", progress=lambda line: None)
