"""Hostile workflows against the running engine: each attack that worked on the host engine, as a
workflow, now changes nothing outside the job's own container (docs/execution.md).

The runs go through the real Scheduler and the session's Podman; the spindle's own API is served
on a loopback port and, for the database test, PostgreSQL listens on this host.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from app.runs.models import Status
from tests.engine.conftest import Harness
from tests.support.nettargets import Targets, net_targets  # noqa: F401  (fixture)

CANARY = "spindle-canary-7f3a9c"


def reach(name: str, address: tuple[str, int]) -> str:
    host, port = address
    return (
        f"echo \"{name}=$(timeout 5 bash -c 'exec 3<>/dev/tcp/{host}/{port} && head -n1 <&3 && echo open' "
        f'2>/dev/null || echo blocked)"'
    )


def answers(output: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output if "=" in line and " " not in line.split("=", 1)[0])


async def test_a_step_cannot_read_host_files_or_write_outside_its_container(
    harness: Harness, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text(f"{CANARY}\n")
    secret.chmod(0o600)
    database = harness.url.split("///", 1)[-1]
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  cat {secret} /etc/shadow {database} 2>&1 | head -c 2000 || true
                  mount -t tmpfs none /mnt 2>&1 || echo mount-refused
                  touch {tmp_path}/planted 2>&1 || true
                  ls {tmp_path} 2>&1 || echo host-dir-absent
        """
    )
    output = await harness.output(run.id)
    assert run.status is Status.SUCCESS, run.error
    assert not any(CANARY in line for line in output)
    assert "mount-refused" in output
    assert "host-dir-absent" in output
    assert not (tmp_path / "planted").exists()


async def test_the_service_environment_never_reaches_a_log_through_file_command_links(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINDLE_TEST_CANARY", CANARY)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - id: links
                run: |
                  ln -sf /proc/self/environ "$GITHUB_OUTPUT"
                  ln -sf /proc/1/environ "$GITHUB_ENV"
                  rm -f "$GITHUB_PATH"; mkfifo "$GITHUB_PATH"
              - run: |
                  rm -rf "$RUNNER_TEMP"; ln -s / "$RUNNER_TEMP"
              - run: echo "after=${{ steps.links.outputs.PATH }}" && echo next-step-ran
        """
    )
    output = await harness.output(run.id)
    assert run.status is Status.SUCCESS, run.error
    assert "next-step-ran" in output
    assert not any(CANARY in line for line in output)
    assert "after=" in output


async def test_the_network_reaches_the_internet_but_not_the_host_its_lan_or_the_spindle(
    harness: Harness,
    net_targets: Targets,  # noqa: F811
) -> None:
    api = socket.socket()
    api.bind(("0.0.0.0", 0))  # as `spindle serve` binds: every address of this host
    api.listen(8)
    api_port = api.getsockname()[1]
    probes = [
        reach("public", net_targets.public),
        reach("private", net_targets.private),
        reach("lan", net_targets.lan),
        reach("loopback", net_targets.loopback),
        reach("api-loopback", ("127.0.0.1", api_port)),
        reach("metadata", ("169.254.169.254", 80)),
    ]
    if net_targets.host is not None:
        probes.append(reach("host", net_targets.host))
        probes.append(reach("api-host", (net_targets.host[0], api_port)))
    postgres = os.environ.get("SPINDLE_TEST_POSTGRES_URL", "")
    if "@" in postgres:
        hostport = postgres.split("@", 1)[1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        probes.append(reach("database", (host or "127.0.0.1", int(port or 5432))))
    script = "\n".join(f"          {line}" for line in probes)
    try:
        run = await harness.run(
            f"""
on: workflow_dispatch
jobs:
  a:
    steps:
      - run: |
{script}
"""
        )
    finally:
        api.close()
    assert run.status is Status.SUCCESS, run.error
    seen = answers(await harness.output(run.id))
    assert seen.pop("public").startswith("public")
    assert seen and all(value == "blocked" for value in seen.values()), seen


async def test_limits_fail_the_job_naming_them(harness: Harness) -> None:
    await harness.started(job_memory_mb=128, job_max_processes=64)
    memory = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  for i in 1 2 3; do python3 -c 'x = bytearray(60 << 20); import time; time.sleep(3)' & done
                  wait
        """
    )
    processes = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  for i in $(seq 100); do sleep 5 & done
                  wait
                  exit 1
        """
    )
    assert memory.status is Status.FAILED
    assert "ran out of memory (limit 128 MiB, SPINDLE_JOB_MEMORY_MB)" in (memory.error or "")
    assert processes.status is Status.FAILED
    assert "process limit (64, SPINDLE_JOB_MAX_PROCESSES)" in (processes.error or "")


async def test_an_expression_bomb_fails_the_run_quickly_and_the_service_keeps_going(harness: Harness) -> None:
    bomb = "'x'"
    for _ in range(8):
        bomb = "format('{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}', " + bomb + ")"
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: echo "${{{{ {bomb} }}}}"
        """
    )
    after = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: echo still-serving
        """
    )
    assert run.status is Status.FAILED
    assert "format(): the result is longer than 1 MiB" in (run.error or "")
    assert "still-serving" in await harness.output(after.id)
