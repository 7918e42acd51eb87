"""Pulling a missing image, against a fake engine API (no registry is reachable from tests)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiohttp import web

from app.engine.container import images

# What Docker streams for `docker pull node:20` with two layers, shortened.
DOCKER_PULL: list[dict[str, Any]] = [
    {"status": "Pulling from library/node", "id": "20"},
    {"status": "Pulling fs layer", "id": "aaa"},
    {"status": "Pulling fs layer", "id": "bbb"},
    *(
        {"status": "Downloading", "progressDetail": {"current": n, "total": 3}, "id": "aaa"}
        for n in (1, 2, 3)
    ),
    {"status": "Download complete", "id": "aaa"},
    *({"status": "Downloading", "progressDetail": {"current": n, "total": 2}, "id": "bbb"} for n in (1, 2)),
    {"status": "Download complete", "id": "bbb"},
    *({"status": "Extracting", "progressDetail": {"current": n, "total": 3}, "id": "aaa"} for n in (1, 2, 3)),
    {"status": "Pull complete", "id": "aaa"},
    {"status": "Extracting", "progressDetail": {"current": 2, "total": 2}, "id": "bbb"},
    {"status": "Pull complete", "id": "bbb"},
    {"status": "Digest: sha256:" + "c" * 64},
    {"status": "Status: Downloaded newer image for node:20"},
]


@dataclass
class FakeEngine:
    """Answers the few Docker Engine API calls a pull makes; `stream` is what images/create sends."""

    stream: list[dict[str, Any]] = field(default_factory=list)
    has_image_after_pull: bool = True
    pulled: list[str] = field(default_factory=list)
    auth: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1.41/images/{name:.+}/json", self.inspect)
        app.router.add_post("/v1.41/images/create", self.create)
        return app

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "fake"})

    async def inspect(self, request: web.Request) -> web.Response:
        if self.pulled and self.has_image_after_pull:
            return web.json_response({"Id": "sha256:" + "d" * 64})
        return web.json_response({"message": "No such image"}, status=404)

    async def create(self, request: web.Request) -> web.StreamResponse:
        self.pulled.append(request.query["fromImage"])
        if "X-Registry-Auth" in request.headers:
            self.auth.append(json.loads(base64.urlsafe_b64decode(request.headers["X-Registry-Auth"])))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for message in self.stream:
            await response.write(json.dumps(message).encode() + b"\r\n")
        await response.write_eof()
        return response


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeEngine, aiodocker.Docker]]:
    engine = FakeEngine()
    runner = web.AppRunner(engine.app())
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "api.sock")).start()
    try:
        async with aiodocker.Docker(url=f"unix://{tmp_path / 'api.sock'}") as docker:
            yield engine, docker
    finally:
        await runner.cleanup()


async def test_a_pull_reports_each_layer_status_once(fake: tuple[FakeEngine, aiodocker.Docker]) -> None:
    engine, docker = fake
    engine.stream = DOCKER_PULL
    lines: list[str] = []
    await images.ensure_image(docker, "node:20", progress=lines.append)
    assert engine.pulled == ["docker.io/library/node:20"]
    assert lines == [
        "pulling docker.io/library/node:20",
        "20: Pulling from library/node",
        "aaa: Pulling fs layer",
        "bbb: Pulling fs layer",
        "aaa: Downloading",
        "aaa: Download complete",
        "bbb: Downloading",
        "bbb: Download complete",
        "aaa: Extracting",
        "aaa: Pull complete",
        "bbb: Extracting",
        "bbb: Pull complete",
        "Digest: sha256:" + "c" * 64,
        "Status: Downloaded newer image for node:20",
        "pulled docker.io/library/node:20",
    ]


async def test_an_error_in_the_pull_stream_fails_naming_the_image(
    fake: tuple[FakeEngine, aiodocker.Docker],
) -> None:
    engine, docker = fake
    engine.stream = [
        DOCKER_PULL[0],
        {"error": "manifest unknown", "errorDetail": {"message": "manifest unknown"}},
    ]
    with pytest.raises(images.ImagePullFailed, match="cannot pull image node:20: manifest unknown"):
        await images.ensure_image(docker, "node:20", progress=lambda line: None)


async def test_a_pull_that_reports_nothing_and_brings_no_image_fails(
    fake: tuple[FakeEngine, aiodocker.Docker],
) -> None:
    engine, docker = fake
    engine.has_image_after_pull = False
    with pytest.raises(images.ImagePullFailed, match="cannot pull image node:20: .*no such image"):
        await images.ensure_image(docker, "node:20", progress=lambda line: None)


async def test_credentials_go_to_the_engine_for_the_image_registry(
    fake: tuple[FakeEngine, aiodocker.Docker],
) -> None:
    engine, docker = fake
    await images.ensure_image(
        docker,
        "ghcr.io/someone/tool:1",
        credentials={"username": "someone", "password": "s3cret"},
        progress=lambda line: None,
    )
    assert engine.auth == [{"username": "someone", "password": "s3cret", "serveraddress": "ghcr.io"}]
