"""A step in a container of its own image, beside the job container (Docker actions, `docker://`).

    result = await run(docker, config, name=..., timeout=60, output=sink, cancel=event)

`config` is the container's create body (ContainerBackend.step_config makes it: the job's network
namespace and, on Podman, user namespace; the job's volumes; its limits). The container is created,
started, its output followed line by line (stdout and stderr apart), waited for; on timeout or
cancel it is killed (SIGKILL), and in every case removed. Nothing here runs on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from app.engine.backend import ExecResult, OutputSink

log = logging.getLogger(__name__)

KILL_DRAIN = 5.0  # seconds to keep reading output once the container was killed
REMOVE_TIMEOUT = 30.0
_HEADER = struct.Struct(">BxxxL")  # the engine's multiplexed stream: stream id, length


async def run(
    docker: aiodocker.Docker,
    config: dict[str, Any],
    *,
    name: str,
    timeout: float,
    output: OutputSink,
    cancel: asyncio.Event,
    lines: Callable[[str, OutputSink], Any],
    started: Callable[[str], None],
    finished: Callable[[str], None],
    exited: Callable[[Any, ExecResult], Awaitable[None]] | None = None,
) -> tuple[ExecResult, dict[str, Any]]:
    """The step's result and the container's last State (OOMKilled ...). `lines(stream, output)`
    makes a line splitter (feed/close); `started`/`finished` get the container id once it exists
    and once it is gone, so that the job knows which step containers to remove with it.
    `exited(container, result)` runs after the container exited and before it is removed (the
    builder takes its file system there)."""
    try:
        container = await docker.containers.create(config, name=name)
    except DockerError as exc:
        return ExecResult(None, error=f"the step's container could not be created: {exc.message}"), {}
    started(container.id)
    try:
        result, state = await _run(
            docker, container, timeout=timeout, output=output, cancel=cancel, lines=lines
        )
        if exited is not None:
            await exited(container, result)
        return result, state
    finally:
        with contextlib.suppress(DockerError, TimeoutError, aiohttp.ClientError):
            async with asyncio.timeout(REMOVE_TIMEOUT):
                await container.delete(force=True, v=True)
        finished(container.id)


async def _run(
    docker: aiodocker.Docker,
    container: Any,
    *,
    timeout: float,
    output: OutputSink,
    cancel: asyncio.Event,
    lines: Callable[[str, OutputSink], Any],
) -> tuple[ExecResult, dict[str, Any]]:
    try:
        await container.start()
    except DockerError as exc:
        return ExecResult(None, error=f"the step's container could not be started: {exc.message}"), {}
    splitters = {1: lines("stdout", output), 2: lines("stderr", output)}
    reader = asyncio.create_task(_follow(docker, container.id, splitters))
    waiter = asyncio.create_task(container.wait())
    cancelled = asyncio.create_task(cancel.wait())
    timed_out = was_cancelled = False
    try:
        done, _ = await asyncio.wait(
            {waiter, cancelled}, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            was_cancelled = cancelled in done
            timed_out = not was_cancelled
            with contextlib.suppress(DockerError):
                await container.kill(signal="SIGKILL")
            with contextlib.suppress(TimeoutError, DockerError):
                await asyncio.wait_for(asyncio.shield(waiter), KILL_DRAIN)
        # The output ends with the container; what is left in the pipe is read before the result.
        with contextlib.suppress(TimeoutError, DockerError, aiohttp.ClientError):
            await asyncio.wait_for(asyncio.shield(reader), KILL_DRAIN)
    finally:
        for task in (cancelled, waiter, reader):
            if not task.done():
                task.cancel()
            # Retrieved, whatever it was: the container may have been removed under it (destroy_job).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for splitter in splitters.values():
            splitter.close()
    state: dict[str, Any] = {}
    with contextlib.suppress(DockerError):
        state = (await container.show()).get("State") or {}
    exit_code = state.get("ExitCode")
    if (timed_out or was_cancelled) and exit_code in (None, 0, -1):
        exit_code = 137
    return ExecResult(exit_code, timed_out=timed_out, cancelled=was_cancelled), state


async def _follow(docker: aiodocker.Docker, container_id: str, splitters: dict[int, Any]) -> None:
    """The container's output, stdout and stderr apart, until it exits.

    aiodocker's log() decodes the stream into text and drops which stream a chunk came from, so the
    multiplexed frames (8-byte header: stream id, length) are read here."""
    async with docker._query(
        f"containers/{container_id}/logs",
        "GET",
        params={"stdout": "1", "stderr": "1", "follow": "1"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    ) as response:
        while True:
            try:
                header = await response.content.readexactly(_HEADER.size)
            except asyncio.IncompleteReadError:
                return
            stream, length = _HEADER.unpack(header)
            if not length:
                continue
            try:
                data = await response.content.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                data = exc.partial
            splitters.get(stream, splitters[1]).feed(data)
