"""The session's Podman (tests/support/podman.py) and a client of it in each test's own loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiodocker
import pytest

from tests.support.podman import PodmanEngine


@pytest.fixture
async def docker(podman_engine: PodmanEngine) -> AsyncIterator[aiodocker.Docker]:
    async with aiodocker.Docker(url=podman_engine.url) as client:
        yield client
