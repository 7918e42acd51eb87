"""Finding the engine, starting Podman ourselves, and stopping it."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiodocker
import pytest

from app.config import Settings
from app.engine.container import engine
from tests.support.podman import TEST_IMAGE, PodmanEngine

ROOT = Path(__file__).resolve().parents[3]


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)  # type: ignore[arg-type]


async def test_the_podman_service_it_started_answers_ping(
    podman_engine: PodmanEngine, docker: aiodocker.Docker
) -> None:
    async with docker._query("_ping", versioned_api=False) as response:
        assert await response.text() == "OK"
    assert podman_engine.handle is not None
    assert podman_engine.handle.kind == "podman"
    assert podman_engine.handle.describe().startswith("Podman ")
    assert "started by the spindle" in podman_engine.handle.describe()


async def test_spindle_docker_host_is_used_as_is_and_left_running(
    podman_engine: PodmanEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    handle = await engine.connect(settings(tmp_path, docker_host=podman_engine.url))
    assert (handle.url, handle.kind, handle.service) == (podman_engine.url, "podman", None)
    await handle.close()
    assert not (tmp_path / "data" / "podman").exists()
    async with aiodocker.Docker(url=podman_engine.url) as client:
        assert (await client.version())["Version"]


async def test_spindle_docker_host_that_does_not_answer_is_an_error_naming_it(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nothing.sock"
    with pytest.raises(engine.EngineNotFound, match=f"SPINDLE_DOCKER_HOST={url} does not answer /_ping"):
        await engine.connect(settings(tmp_path, docker_host=url))


async def test_docker_host_is_used_when_spindle_docker_host_is_unset(
    podman_engine: PodmanEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", podman_engine.url)
    handle = await engine.connect(settings(tmp_path))
    assert (handle.url, handle.service) == (podman_engine.url, None)
    await handle.close()


async def test_without_podman_or_docker_the_error_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(engine, "DOCKER_SOCKET", tmp_path / "docker.sock")
    with pytest.raises(
        engine.EngineNotFound, match="podman is not installed.*run scripts/setup or set SPINDLE_"
    ):
        await engine.connect(settings(tmp_path))


async def test_stops_the_podman_service_it_started_and_replaces_a_stale_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    (tmp_path / "data" / "podman").mkdir(parents=True)
    (tmp_path / "data" / "podman" / "podman.sock").touch()  # left by a crash: nobody answers there
    handle = await engine.connect(settings(tmp_path))
    assert handle.service is not None
    conf = (tmp_path / "data" / "podman" / "containers.conf").read_text()
    assert 'network_backend = "netavark"' in conf
    await handle.close()
    assert handle.service.process.returncode is not None
    assert not handle.service.socket.exists()
    with pytest.raises(engine.EngineNotFound, match="does not answer"):
        await engine.connect(settings(tmp_path, docker_host=handle.url))


async def test_refuses_to_start_where_another_podman_service_answers(
    podman_engine: PodmanEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    with pytest.raises(engine.EngineNotFound, match="a podman service already answers"):
        await engine.connect(podman_engine.settings)


def test_containers_conf_names_runc_only_when_installed_and_auto_userns_only_for_root() -> None:
    assert 'runtime = "runc"' in engine.containers_conf(runc=True, root=True)
    assert "runtime" not in engine.containers_conf(runc=False, root=True)
    assert 'userns = "auto"' in engine.containers_conf(runc=True, root=True)
    assert "userns" not in engine.containers_conf(runc=True, root=False)


def test_podman_gets_a_mount_namespace_of_its_own_only_when_root_and_slash_is_private() -> None:
    sock = Path("/d/podman.sock")
    private = engine.podman_command(sock, private_root=True, root=True)
    assert private[private.index("unshare") :][:5] == ["unshare", "--mount", "--propagation", "shared", "--"]
    assert "unshare" not in engine.podman_command(sock, private_root=False, root=True)
    assert "unshare" not in engine.podman_command(sock, private_root=True, root=False)
    assert private[-5:] == ["podman", "system", "service", "--time=0", "unix:///d/podman.sock"]


# Run in a mount namespace whose `/` is private (as on hosts without systemd): connect() must start
# Podman so that a container with an exec is removed cleanly and leaves no veth, bridge or netns.
LEAK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, subprocess, sys
    from pathlib import Path
    from app.config import Settings
    from app.engine.container import engine

    def links(bridge):
        out = subprocess.run(["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True)
        return [link["ifindex"] for link in json.loads(out.stdout or "[]")]

    async def main(data_dir, image, bridge):
        report = {"private": engine.root_is_private()}
        handle = await engine.connect(Settings(data_dir=Path(data_dir), docker_host=None))
        docker = handle.docker
        try:
            options = {"com.docker.network.bridge.name": bridge}
            network = await docker.networks.create({"Name": bridge, "Options": options})
            container = await docker.containers.create(
                {"Image": image, "Cmd": ["sleep", "300"], "HostConfig": {"NetworkMode": bridge}}
            )
            await container.start()
            report["veths"] = links(bridge)
            execution = await container.exec(["echo", "inside"])
            async with execution.start(detach=False) as stream:
                report["exec"] = (await stream.read_out()).data.decode()
            await container.delete(force=True)
            await network.delete()
        finally:
            await handle.close()
        print(json.dumps(report))

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_a_container_with_an_exec_leaves_nothing_behind_when_slash_is_private(
    podman_engine: PodmanEngine, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("a private `/` needs a mount namespace of our own: run the suite as root (CI does)")
    bridge = f"spdt{os.getpid() % 100000}"
    script = tmp_path / "leak.py"
    script.write_text(LEAK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINDLE_") and k != "DOCKER_HOST"}
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, str(script)]
        + [str(tmp_path / "data"), TEST_IMAGE.tag, bridge],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["private"] is True
    assert report["exec"] == "inside\n"
    assert len(report["veths"]) == 1
    # Interface indexes are not reused soon, unlike names (veth0, veth1...) of other tests' containers.
    left = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    assert [link["ifname"] for link in left if link["ifname"] == bridge] == []
    assert [link["ifname"] for link in left if link["ifindex"] in report["veths"]] == []


HANG_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from app.config import Settings
    from app.engine.container import engine

    async def main(data_dir):
        handle = await engine.connect(Settings(data_dir=Path(data_dir), docker_host=None))
        print(handle.service.process.pid, flush=True)
        await asyncio.sleep(300)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_the_podman_service_dies_with_a_spindle_killed_by_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text(HANG_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINDLE_") and k != "DOCKER_HOST"}
    spindle = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data")],
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("w"),
        text=True,
        cwd=ROOT,
    )
    try:
        assert spindle.stdout is not None
        # A safety net against a child that never answers, not a timing assertion.
        ready, _, _ = select.select([spindle.stdout], [], [], 120)
        assert ready, f"the child never started Podman:\n{(tmp_path / 'stderr').read_text()}"
        podman = int(spindle.stdout.readline())
        assert Path(f"/proc/{podman}").exists()
    finally:
        spindle.kill()
        spindle.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{podman}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{podman}").exists()
