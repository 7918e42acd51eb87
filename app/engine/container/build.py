"""The build context of a Docker action's image: a tar of a directory on the host.

    archive = await asyncio.to_thread(context_archive, directory, dockerfile, max_bytes=...)
    image = await builder.Builder(docker, archive=archive, ...).build(tag)   # builder.py

The build context is a tar of the action's directory made here: regular files, directories and
symbolic links as they are (a link is stored as a link, never followed, so nothing outside the
directory is read); owners, times and other file types dropped, so the same files give the same
archive and its digest names the content (the per-job cache of built images is keyed by it).

Errors: StepImageError (app/engine/backend.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from app.engine.backend import StepImageError

TAIL_LINES = 15  # of the build's output, in the error when it fails
_CHUNK = 1 << 20


@dataclass
class ContextArchive:
    file: IO[bytes]  # the tar, positioned at 0; the caller closes it
    digest: str  # sha256 of the tar and the Dockerfile's path
    size: int


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


async def _chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(file.read, _CHUNK):
        yield chunk
