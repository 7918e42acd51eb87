"""A real Podman for tests, started by the spindle's own connect() (the code path of production).

    @pytest.fixture
    async def docker(podman_engine):                 # the session's engine (fixture below)
        async with aiodocker.Docker(url=podman_engine.url) as client:   # a client in the test's loop
            yield client
    podman_engine.image                              # TEST_IMAGE's tag: a small Debian image

The engine lives for the whole session in a thread with its own event loop (an async session
fixture would force every test onto one loop); tests talk to it through its socket. TEST_IMAGE is
built once with the spindle's own builder and kept in the engine's storage across sessions: a
session finds it by its tag (which changes with the package list) and builds only when it is
missing. Import the fixture into a conftest.py: `from tests.support.podman import podman_engine`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import aiodocker
import pytest

from app.config import Settings
from app.engine.container import engine, images
from app.engine.container.backend import LABEL_DEPLOYMENT, LABEL_ROLE, LABEL_RUN

log = logging.getLogger(__name__)
T = TypeVar("T")

TEST_IMAGE = images.DebianImage(
    "localhost/spindle-test", ("bash", "coreutils", "git", "ca-certificates", "python3", "procps", "nodejs")
)
START_TIMEOUT = 120.0  # a safety net against hangs, not a timing assertion
BUILD_TIMEOUT = 600.0


class PodmanEngine:
    """connect() on a loop of its own thread; `url` is where tests reach the engine."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(data_dir=data_dir, docker_host=None)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="podman-engine", daemon=True)
        self.handle: engine.EngineHandle | None = None
        self.image = TEST_IMAGE.tag

    @property
    def url(self) -> str:
        assert self.handle is not None
        return self.handle.url

    def env(self) -> dict[str, str]:
        """The variables that point a `spindle serve` subprocess at this engine and image."""
        return {"SPINDLE_DOCKER_HOST": self.url, "SPINDLE_RUNNER_IMAGE": self.image}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT) -> T:
        """Run a coroutine on the engine's loop (where `handle.docker` lives) and wait for it."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self) -> PodmanEngine:
        self.thread.start()
        # Our own Podman, whatever engine the developer's shell names.
        with pytest.MonkeyPatch.context() as env:
            env.delenv("DOCKER_HOST", raising=False)
            self.handle = self.run(engine.connect(self.settings))
        log.info("test engine: %s", self.handle.describe())
        self.run(
            images.ensure_built(self.handle.docker, TEST_IMAGE, progress=log.info), timeout=BUILD_TIMEOUT
        )
        return self

    def stop(self) -> None:
        if self.handle is not None:
            self.run(self.handle.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


async def touch_in_jobs(url: str, run_id: int, path: str, *, deployment: str | None = None) -> int:
    """Create `path` inside the job containers of run `run_id` (how a test releases a step that
    waits for a file: host paths are not visible to jobs); the number of containers touched."""
    async with aiodocker.Docker(url=url) as docker:
        label = [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}=job"]
        if deployment is not None:
            label.append(f"{LABEL_DEPLOYMENT}={deployment}")
        containers = await docker.containers.list(filters={"label": label})
        for container in containers:
            execution = await container.exec(cmd=["touch", path])
            async with execution.start(detach=False) as stream:
                while await stream.read_out() is not None:
                    pass
        return len(containers)


@pytest.fixture(scope="session")
def podman_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanEngine]:
    """A Podman API service the spindle's connect() started, with TEST_IMAGE in its storage."""
    podman = PodmanEngine(tmp_path_factory.mktemp("engine"))
    try:
        yield podman.start()
    finally:
        podman.stop()
