"""Docker actions' images, built by the engine from a directory on the host.

    archive = await asyncio.to_thread(context_archive, directory, dockerfile, max_bytes=...)
    image = await build_image(docker, archive, tag=..., labels=..., isolation=..., progress=say)

The build context is a tar of the action's directory made here: regular files, directories and
symbolic links as they are (a link is stored as a link, never followed, so nothing outside the
directory is read); owners, times and other file types dropped, so the same files give the same
archive and its digest names the content (the per-job cache of built images is keyed by it).

A Dockerfile's RUN lines are code of whoever wrote the action: `BuildIsolation` says how they run
(no network, the job's memory and CPUs; not in a user namespace, see build_params).

Errors: StepImageError (app/engine/backend.py), with the build's last lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import aiodocker
import aiohttp

from app.engine.backend import Progress, StepImageError

TAIL_LINES = 15  # of the build's output, in the error when it fails
_CHUNK = 1 << 20


@dataclass
class ContextArchive:
    file: IO[bytes]  # the tar, positioned at 0; the caller closes it
    digest: str  # sha256 of the tar and the Dockerfile's path
    size: int


@dataclass(frozen=True)
class BuildIsolation:
    """How the build's RUN lines are confined."""

    memory_bytes: int
    cpus: float
    podman: bool


def check_dockerfile_path(dockerfile: str) -> str:
    """A path relative to the context that stays in it; StepImageError otherwise."""
    path = PurePosixPath(dockerfile)
    if not dockerfile or path.is_absolute() or ".." in path.parts or "\\" in dockerfile:
        raise StepImageError(f"the Dockerfile {dockerfile!r} is not a path inside the action's directory")
    return str(path)


def context_archive(directory: Path, dockerfile: str, *, max_bytes: int) -> ContextArchive:
    """A tar of `directory` in a temporary file (blocking: call it in a thread).

    StepImageError when the Dockerfile is not a regular file in it, or the files pass `max_bytes`."""
    dockerfile = check_dockerfile_path(dockerfile)
    root = Path(os.path.realpath(directory))
    target = root / dockerfile
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        raise StepImageError(f"the action has no {dockerfile}") from None
    if not stat.S_ISREG(mode):
        raise StepImageError(f"the action's {dockerfile} is not a regular file")
    file = tempfile.TemporaryFile(prefix="spindle-context-")
    digest = hashlib.sha256()
    total = 0

    class _Hashing:
        def write(self, data: bytes) -> int:
            digest.update(data)
            return file.write(data)

    try:
        with tarfile.open(fileobj=_Hashing(), mode="w|", format=tarfile.PAX_FORMAT) as archive:  # type: ignore[call-overload]
            for current, dirs, files in os.walk(root, followlinks=False):
                dirs.sort()
                for name in sorted(dirs) + sorted(files):
                    path = Path(current) / name
                    relative = path.relative_to(root).as_posix()
                    info = os.lstat(path)
                    entry = tarfile.TarInfo(relative)
                    entry.mode = stat.S_IMODE(info.st_mode) & 0o755 | 0o644
                    entry.mtime = 0
                    if stat.S_ISDIR(info.st_mode):
                        entry.type = tarfile.DIRTYPE
                        entry.mode = 0o755
                        archive.addfile(entry)
                    elif stat.S_ISLNK(info.st_mode):
                        entry.type = tarfile.SYMTYPE
                        entry.linkname = os.readlink(path)
                        archive.addfile(entry)
                    elif stat.S_ISREG(info.st_mode):
                        total += info.st_size
                        if total > max_bytes:
                            raise StepImageError(
                                f"the action's directory is larger than {max_bytes >> 20} MiB"
                            )
                        # O_NOFOLLOW: a file swapped for a link since the lstat is not read.
                        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                        with os.fdopen(fd, "rb") as source:
                            entry.size = os.fstat(source.fileno()).st_size
                            archive.addfile(entry, source)
        digest.update(b"\0" + dockerfile.encode())
        size = file.tell()
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return ContextArchive(file=file, digest=digest.hexdigest(), size=size)


def build_params(
    *, tag: str, dockerfile: str, labels: Mapping[str, str], isolation: BuildIsolation
) -> dict[str, str]:
    """The query of POST /build: no cache shared with other builds, no intermediate images kept."""
    params = {
        "t": tag,
        "dockerfile": dockerfile,
        "labels": json.dumps(dict(labels)),
        "rm": "1",
        "forcerm": "1",
        "nocache": "1",  # a cached layer could be another job's RUN result
        "memory": str(isolation.memory_bytes),
        "memswap": str(isolation.memory_bytes),
        "cpuperiod": "100000",
        "cpuquota": str(max(int(isolation.cpus * 100000), 1000)),
    }
    if isolation.podman:
        # Podman's compat build runs RUN in the host's network namespace unless told otherwise
        # (pkg/api/handlers/compat/images_build.go): a namespace of its own, with no network set up.
        params["networkmode"] = "NetworkDisabled"
        params["nsoptions"] = json.dumps([{"Name": "network", "Host": False}])
        params["layers"] = "0"
        # No user namespace for RUN: Podman 4.3 gives a mapped build (`--userns=auto`, or explicit
        # maps) a root file system still owned by the unmapped host root, so no RUN line can write
        # to it (`podman build --userns=auto` fails the same way). RUN is the engine's root with the
        # default capabilities and seccomp profile, no network, the job's memory and CPUs, as with
        # `docker build` on Docker without userns-remap (docs/execution.md says so).
    else:
        params["networkmode"] = "none"
    return params


async def build_image(
    docker: aiodocker.Docker,
    archive: ContextArchive,
    *,
    params: Mapping[str, str],
    what: str,
    progress: Progress,
) -> None:
    """POST /build with the archive; each output line to `progress`. StepImageError with the
    last lines when the build fails or the engine ends the stream without naming an image."""
    tail: list[str] = []
    error: str | None = None
    finished = False

    def say(text: str) -> None:
        for line in text.splitlines():
            line = line.rstrip()
            if line:
                progress(line)
                tail.append(line)
                del tail[:-TAIL_LINES]

    try:
        async with docker._query(
            "build",
            "POST",
            params=dict(params),
            data=_chunks(archive.file),
            headers={"Content-Type": "application/x-tar"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        ) as response:
            async for raw in response.content:
                message = _message(raw)
                if message is None:
                    continue
                if message.get("error"):
                    error = str(message["error"]).strip()
                elif isinstance(message.get("stream"), str):
                    say(message["stream"])
                if message.get("aux") or str(message.get("stream", "")).startswith("Successfully built"):
                    finished = True
    except aiodocker.DockerError as exc:
        error = exc.message
    except (aiohttp.ClientError, OSError) as exc:
        error = f"the engine's connection failed: {exc}"
    if error is None and not finished:
        error = "the engine ended the build without naming an image"
    if error is not None:
        lines = "\n".join(tail)
        raise StepImageError(
            f"cannot build {what}: {error}" + (f"\nits last lines:\n{lines}" if lines else "")
        )


async def _chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(file.read, _CHUNK):
        yield chunk


def _message(raw: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
