"""`container:` and `services:` of real workflows, on the session's Podman."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiodocker
import pytest

from app.runs.models import Status
from tests.engine.conftest import Harness
from tests.support.podman import PodmanEngine

OTHER = "localhost/spindle-other:1"


@pytest.fixture
async def other_image(podman_engine: PodmanEngine) -> AsyncIterator[str]:
    """The test image under another name, as a job's `container:` would name any local image."""
    async with aiodocker.Docker(url=podman_engine.url) as docker:
        repo, tag = OTHER.rsplit(":", 1)
        await docker.images.tag(podman_engine.image, repo=repo, tag=tag)
        yield OTHER


async def test_a_job_runs_in_its_container_image_with_its_env(harness: Harness, other_image: str) -> None:
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            container:
              image: {other_image}
              env: {{FROM_CONTAINER: yes-it-is}}
              options: --cpus 1 --memory 512m
            steps:
              - run: |
                  echo "env=$FROM_CONTAINER"
                  v1=/sys/fs/cgroup/memory/memory.limit_in_bytes
                  echo "memory=$(cat $v1 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "env=yes-it-is" in output
    assert f"memory={512 * 1024 * 1024}" in output  # options may lower the operator's limit


async def test_a_refused_container_option_fails_the_job_naming_it(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            container:
              image: anything
              options: --privileged
            steps:
              - run: echo should-not-run
        """
    )
    assert run.status is Status.FAILED
    assert "container: options: --privileged is not allowed on this spindle" in (run.error or "")


async def test_a_missing_image_fails_the_job_naming_it(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            container: registry.invalid/nobody/nothing:1
            steps:
              - run: echo should-not-run
        """
    )
    assert run.status is Status.FAILED
    assert "registry.invalid/nobody/nothing:1" in (run.error or "")
    assert "should-not-run" not in await harness.output(run.id)


async def test_services_answer_by_their_id_and_on_localhost_once_healthy(
    harness: Harness, podman_engine: PodmanEngine
) -> None:
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            services:
              web:
                image: {podman_engine.image}
                entrypoint: python3
                command: -m http.server 80
                options: >-
                  --health-cmd "bash -c 'exec 3<>/dev/tcp/127.0.0.1/80'"
                  --health-interval 1s --health-retries 30
                ports: ["8080:80"]
                env: {{SERVICE_MODE: test}}
            steps:
              - run: |
                  for host in web localhost; do
                    exec 3<>/dev/tcp/$host/${{{{ job.services.web.ports['80'] }}}}
                    printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3
                    echo "$host: $(head -n1 <&3)"
                    exec 3<&-
                  done
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "web: HTTP/1.0 200 OK" in output and "localhost: HTTP/1.0 200 OK" in output
    assert "spindle: service web is healthy" in output
