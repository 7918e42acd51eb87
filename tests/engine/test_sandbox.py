"""What confines a step: bubblewrap (it works on this host), a clean environment, rlimits, group kill."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine import sandbox
from app.engine.local import LocalEngine
from app.runs.models import Status
from tests.engine.conftest import Harness


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A host directory outside /tmp and outside the data directory, writable by the service."""
    path = Path("/var/tmp") / f"spindle-sandbox-{secrets.token_hex(6)}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_steps_run_in_bubblewrap_on_this_host(harness: Harness) -> None:
    scheduler = await harness.started()
    assert isinstance(scheduler.engine, LocalEngine)
    assert scheduler.engine.status is not None
    assert scheduler.engine.status.mode == "bwrap"
    run = await harness.run("on: push\njobs:\n  a:\n    steps:\n      - run: hostname\n")
    output = await harness.output(run.id)
    assert (
        "spindle: steps run with bubblewrap (read-only host, private /tmp, no network) with resource limits"
        in output
    )
    assert "spindle" in output  # the sandbox's own hostname


async def test_a_step_cannot_write_outside_its_job_directory(harness: Harness, outside_dir: Path) -> None:
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  touch {outside_dir}/escaped && echo wrote-outside || echo outside-refused
                  touch /usr/escaped && echo wrote-usr || echo usr-refused
                  echo private > /tmp/scratch && echo tmp-writable
                  touch "$GITHUB_WORKSPACE/in" "$HOME/in" "$RUNNER_TEMP/in" && echo inside-writable
              - run: test -e /tmp/scratch && echo tmp-shared || echo tmp-is-per-step
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    for expected in ("outside-refused", "usr-refused", "tmp-writable", "inside-writable", "tmp-is-per-step"):
        assert expected in output
    assert any("Read-only file system" in line for line in output)
    assert not (outside_dir / "escaped").exists()
    assert not Path("/usr/escaped").exists()
    assert not Path("/tmp/scratch").exists()


async def test_a_step_cannot_see_the_database_or_other_runs(harness: Harness) -> None:
    other = await harness.add_run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: echo other-started; sleep 600
        """
    )
    await harness.started()
    await harness.wait_output(other, "other-started")
    data_dir = harness.tmp_path / "data"
    database = harness.tmp_path / "spindle.db"
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  test -s {database} && echo database-visible || echo database-hidden
                  test -e {data_dir}/work/{other} && echo other-run-visible || echo other-run-hidden
                  ls {data_dir}
        """
    )
    await harness.schedulers[0].cancel(other)
    output = await harness.output(run.id)
    assert "database-hidden" in output and "other-run-hidden" in output
    assert output[-1] == "work"  # the data directory holds nothing but this job's path


async def test_a_step_has_no_network(harness: Harness) -> None:
    connections = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        run = await harness.run(
            f"""
            on: workflow_dispatch
            jobs:
              a:
                steps:
                  - shell: python
                    run: |
                      import socket
                      try:
                          socket.create_connection(("127.0.0.1", {port}), timeout=5)
                          print("connected")
                      except OSError as exc:
                          print("no-network", type(exc).__name__)
            """
        )
    finally:
        server.close()
        await server.wait_closed()
    assert any(line.startswith("no-network") for line in await harness.output(run.id))
    assert connections == 0


async def test_no_service_environment_reaches_a_step(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINDLE_OWNER_SECRET", "leak-me-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak-me-2")
    monkeypatch.setenv("VIRTUAL_ENV", "/work/main/.venv")
    run = await harness.run("on: push\njobs:\n  a:\n    steps:\n      - run: env\n")
    output = await harness.output(run.id)
    assert not [line for line in output if line.startswith("SPINDLE_")]
    assert not [line for line in output if "leak-me" in line or "VIRTUAL_ENV" in line]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in output
    assert os.environ["SPINDLE_OWNER_SECRET"] == "leak-me-1"


async def test_memory_and_file_size_limits_stop_a_step(harness: Harness) -> None:
    await harness.started(step_memory_mb=256, step_max_file_mb=1)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: python3 -c 'b = bytearray(32 * 1024 * 1024); print("small-ok")'
              - run: python3 -c 'b = bytearray(1024 * 1024 * 1024); print("big-ok")'
                continue-on-error: true
              - run: head -c 2000000 /dev/zero > big.bin
        """
    )
    assert run.status is Status.FAILED
    assert run.exit_code == 128 + 25  # SIGXFSZ
    output = await harness.output(run.id)
    assert "small-ok" in output and "big-ok" not in output
    assert any("MemoryError" in line for line in output)


@pytest.mark.parametrize("mode", ["off", "auto"])
async def test_timeout_kills_the_whole_process_group(harness: Harness, mode: str) -> None:
    await harness.started(sandbox=mode)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            timeout-minutes: 0.02
            steps:
              - run: |
                  sleep 600 &
                  echo "child=$(readlink /proc/$!/ns/pid) $!"
                  wait
        """
    )
    assert run.status is Status.TIMEOUT
    line = next(line for line in await harness.output(run.id) if line.startswith("child="))
    namespace, pid = line.removeprefix("child=").split()
    if mode == "off":
        # Same PID namespace as the test: the pid is real, and nothing may run under it now.
        assert not _running(pid)
    else:
        assert namespace != os.readlink("/proc/self/ns/pid")  # bubblewrap gave it a namespace of its own
        assert not [
            p for p in os.listdir("/proc") if p.isdigit() and _running(p) and _namespace(p) == namespace
        ]


def _running(pid: str) -> bool:
    """A live process (a zombie left for a non-reaping container init does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _namespace(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


async def test_without_bubblewrap_auto_mode_warns_and_runs_with_rlimits_only(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # the probe finds no bwrap
    scheduler = await harness.started(sandbox="auto")
    run = await harness.run("on: push\njobs:\n  a:\n    steps:\n      - run: echo ran\n")
    assert run.status is Status.SUCCESS
    assert isinstance(scheduler.engine, LocalEngine) and scheduler.engine.status is not None
    assert scheduler.engine.status.mode == "rlimits"
    notice = "spindle: steps run with resource limits only, no filesystem or network isolation"
    assert f"{notice} (bwrap is not installed)" in await harness.output(run.id)


async def test_required_sandbox_without_bubblewrap_refuses_runs_with_a_clear_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    await harness.started(sandbox="required")
    run = await harness.run("on: push\njobs:\n  a:\n    steps:\n      - run: echo never\n")
    assert run.status is Status.FAILED
    assert run.error == ("SPINDLE_SANDBOX=required but bubblewrap does not work here: bwrap is not installed")
    assert "never" not in await harness.output(run.id)


async def test_probe_with_sandbox_off_never_tries_bubblewrap() -> None:
    status = await sandbox.probe("off")
    assert (status.mode, status.reason) == ("rlimits", "SPINDLE_SANDBOX=off")


async def test_hidden_files_outside_tmp_read_as_empty_and_hidden_directories_as_empty(
    outside_dir: Path,
) -> None:
    status = await sandbox.probe("required")
    secret_dir, secret_file, job = (
        outside_dir / "data",
        outside_dir / "spindle.db",
        outside_dir / "data" / "job",
    )
    job.mkdir(parents=True)
    (secret_dir / "other-run").write_text("other run's files")
    secret_file.write_text("the database")
    argv = sandbox.wrap(
        status,
        ["sh", "-c", f"cat {secret_file}; ls {secret_dir}; echo written > {job}/out"],
        writable=job,
        cwd=job,
        network=False,
        hidden=[secret_dir, secret_file],
    )
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, env=sandbox.base_environment(home=job)
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().split() == ["job"]  # no database text, no other run
    assert (job / "out").read_text() == "written\n"


async def test_a_step_cannot_read_the_service_users_home(harness: Harness) -> None:
    probe = Path.home() / f".spindle-sandbox-probe-{secrets.token_hex(4)}"
    probe.write_text("service credentials")
    try:
        run = await harness.run(
            f"""
            on: workflow_dispatch
            jobs:
              a:
                steps:
                  - run: cat {probe} || echo home-hidden
            """
        )
    finally:
        probe.unlink()
    output = await harness.output(run.id)
    assert "home-hidden" in output and "service credentials" not in output
