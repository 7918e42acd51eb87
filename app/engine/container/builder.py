"""The engine's own Dockerfile builder: every RUN in a container of the job's user namespace.

    builder = Builder(docker, archive=archive, dockerfile=name, run_host=..., helper_host=...,
                      labels=..., idmap=(uid_base, gid_base, size), lines=..., progress=say, ...)
    image_id = await builder.build(tag)

Why not the engine's `POST /build`: Podman 4.3 cannot map users in a build, so RUN ran as the
engine's real root. Here each instruction that changes files makes one image:

- RUN: a container of the current image that joins the job's user namespace (as step containers
  do), with no network, the job's limits and labels, runs the line (output to the step's log);
  its file system is exported, the owners shifted back from host ids to the container's own
  (Podman 4.3's commit of a container in a user namespace keeps the host ids, so its layer would
  show every file as `nobody` in the next container), and imported as an image;
- COPY/ADD: the files from the context archive (build.py) put into a container of the current
  image that is created and never started, then committed;
- the configuration (ENV, WORKDIR, USER, ENTRYPOINT, CMD, LABEL, EXPOSE) is set by committing a
  container that is never started, with `changes`.

Nothing here starts a container outside the job's user namespace. Every container and image
carries the job's labels (reap finds them); intermediate images are removed as soon as the next
one exists, the containers when they are done.
Errors: StepImageError naming the instruction and its line (a failed RUN with its last lines).

What Podman 4.3 does, found on a real engine (why this shape): commit of a container in a user
namespace stores host ids in the layer; GET .../archive gives every entry the container user's
host id; export gives consistent host ids (container id + the namespace's base); import keeps
only one `changes`; commit keeps only the last `changes` parameter (newline-joined instructions
in one value work, on Docker too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import fnmatch
import json
import posixpath
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError
from multidict import CIMultiDict

from app.engine.backend import ExecResult, OutputSink, Progress, StepImageError
from app.engine.container import build, dockerfile, steps
from app.engine.container.dockerfile import Instruction

TAIL_LINES = build.TAIL_LINES
RUN_TIMEOUT = 6 * 3600.0  # the step's own timeout cancels the build sooner
DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOBODY = 65534
_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_KEPT_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)


@dataclass
class ImageState:
    """The image being built: its id and the configuration the next commit gives it."""

    image: str
    env: dict[str, str]
    cmd: list[str] | None
    entrypoint: list[str] | None
    workdir: str
    user: str
    labels: dict[str, str]
    exposed: set[str] = field(default_factory=set)
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))

    def changes(self) -> str:
        """Newline-joined: Podman 4.3 keeps only the last of repeated `changes` parameters."""
        lines = [f"ENTRYPOINT {json.dumps(self.entrypoint or [])}", f"CMD {json.dumps(self.cmd or [])}"]
        lines += [f"EXPOSE {port}" for port in sorted(self.exposed)]
        if self.workdir:
            lines.append(f"WORKDIR {self.workdir}")
        if self.user:
            lines.append(f"USER {self.user}")
        return "\n".join(lines)


def shift_owners(source: IO[bytes], target: IO[bytes], idmap: tuple[int, int, int]) -> None:
    """Copy an exported file system, owners mapped from host ids back into the container's range
    (blocking: call it in a thread). Only files, directories and links are kept: device nodes
    and FIFOs of an export are dropped."""
    uid_base, gid_base, size = idmap

    def back(value: int, base: int) -> int:
        if base <= value < base + size:
            return value - base
        return value if value < size else NOBODY

    with (
        tarfile.open(fileobj=source, mode="r|") as reader,
        tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as writer,
    ):
        for member in reader:
            if member.type not in _KEPT_TYPES:
                continue
            member.uid = back(member.uid, uid_base)
            member.gid = back(member.gid, gid_base)
            member.uname = member.gname = ""
            # An export's PAX header carries host ids too large for the ustar fields; tarfile
            # writes the member's PAX headers as they were read, over the fields set above.
            member.pax_headers = {
                key: value
                for key, value in member.pax_headers.items()
                if key not in ("uid", "gid", "uname", "gname")
            }
            writer.addfile(member, reader.extractfile(member) if member.isreg() else None)


class Builder:
    def __init__(
        self,
        docker: aiodocker.Docker,
        *,
        archive: build.ContextArchive,
        dockerfile_name: str,
        run_host: Mapping[str, Any],
        helper_host: Mapping[str, Any],
        labels: Mapping[str, str],
        idmap: tuple[int, int, int],
        max_bytes: int,
        lines: Callable[[str, OutputSink], Any],
        progress: Progress,
        started: Callable[[str], None],
        finished: Callable[[str], None],
        ensure_image: Callable[[str], Awaitable[None]],
        name: str,
    ) -> None:
        self.docker = docker
        self.archive = archive
        self.dockerfile_name = dockerfile_name
        self.run_host = dict(run_host)
        self.helper_host = dict(helper_host)
        self.labels = dict(labels)
        self.idmap = idmap
        self.max_bytes = max_bytes
        self.lines = lines
        self.progress = progress
        self.started = started
        self.finished = finished
        self.ensure_image = ensure_image
        self.name = name
        self.made: list[str] = []  # images made here, removed once the next one exists
        self._count = 0

    async def build(self, tag: str) -> str:
        """The image of the Dockerfile, tagged `tag`; StepImageError when it cannot be built."""
        text = await asyncio.to_thread(self._read_dockerfile)
        instructions = dockerfile.parse(text)
        outer: dict[str, str] = {}  # ARGs before FROM
        variables: dict[str, str] = {}  # ARGs after it
        state: ImageState | None = None
        try:
            for number, instruction in enumerate(instructions, start=1):
                self.progress(f"STEP {number}/{len(instructions)}: {instruction.name} {instruction.text}")
                if instruction.name == "ARG":
                    declared = {word.partition("=")[0] for word in instruction.text.split() if "=" in word}
                    for key, value in dockerfile.pairs(instruction, {**variables}):
                        # As Docker: an ARG before FROM is for FROM; after it, `ARG NAME` alone
                        # takes that value, and only declared ARGs reach RUN.
                        if state is None:
                            outer[key] = value
                        else:
                            variables[key] = value if key in declared else outer.get(key, "")
                    continue
                if instruction.name == "FROM":
                    state = await self._from(instruction, outer)
                    continue
                assert state is not None
                await self._apply(instruction, state, variables)
            assert state is not None
            final = await self._commit(state, tag=tag)
        except BaseException:
            await self._discard(self.made)
            raise
        await self._discard([image for image in self.made if image != final])
        return final

    def _read_dockerfile(self) -> str:
        self.archive.file.seek(0)
        with tarfile.open(fileobj=self.archive.file, mode="r:") as context:
            member = context.getmember(self.dockerfile_name)
            handle = context.extractfile(member)
            assert handle is not None
            data = handle.read(dockerfile.MAX_BYTES + 1)
        return data.decode("utf-8", errors="replace")

    async def _from(self, instruction: Instruction, variables: dict[str, str]) -> ImageState:
        if instruction.flags:
            raise StepImageError(f"{instruction.where()}: flags are not supported")
        words = dockerfile.substitute(instruction.text, variables).split()
        if len(words) == 3 and words[1].lower() == "as":
            words = words[:1]
        if len(words) != 1:
            raise StepImageError(f"{instruction.where()}: expected FROM <image>")
        image = words[0]
        if image.startswith("localhost/spindle-action"):
            # Another job's built action: not a base for this one.
            raise StepImageError(f"{instruction.where()}: {image} is not available to Dockerfiles")
        await self.ensure_image(image)
        config = (await self.docker.images.inspect(image)).get("Config") or {}
        env = dict(item.partition("=")[::2] for item in config.get("Env") or [] if "=" in item)
        env.setdefault("PATH", DEFAULT_PATH)
        labels = {k: v for k, v in (config.get("Labels") or {}).items() if not k.startswith("dev.spindle.")}
        return ImageState(
            image=image,
            env=env,
            cmd=config.get("Cmd"),
            entrypoint=config.get("Entrypoint"),
            workdir=config.get("WorkingDir") or "",
            user=config.get("User") or "",
            labels=labels,
            exposed=set((config.get("ExposedPorts") or {}).keys()),
        )

    async def _apply(self, instruction: Instruction, state: ImageState, variables: dict[str, str]) -> None:
        scope = {**variables, **state.env}
        name = instruction.name
        if name == "RUN":
            await self._run(instruction, state, variables)
        elif name in ("COPY", "ADD"):
            await self._copy(instruction, state, scope)
        elif name == "ENV":
            for key, value in dockerfile.pairs(instruction, scope):
                state.env[key] = value
                scope[key] = value
        elif name == "LABEL":
            for key, value in dockerfile.pairs(instruction, scope):
                if key.startswith("dev.spindle."):
                    raise StepImageError(f"{instruction.where()}: labels dev.spindle.* are the spindle's own")
                state.labels[key] = value
        elif name == "WORKDIR":
            path = dockerfile.substitute(instruction.text, scope)
            state.workdir = posixpath.normpath(posixpath.join(state.workdir or "/", path))
        elif name == "USER":
            state.user = dockerfile.substitute(instruction.text, scope).strip()
        elif name == "EXPOSE":
            for port in dockerfile.substitute(instruction.text, scope).split():
                state.exposed.add(port if "/" in port else f"{port}/tcp")
        elif name in ("ENTRYPOINT", "CMD", "SHELL"):
            argv = instruction.json_list()
            if name == "SHELL":
                if not argv:
                    raise StepImageError(f"{instruction.where()}: expected a JSON list")
                state.shell = argv
                return
            command = argv if argv is not None else [*state.shell, instruction.text]
            if name == "ENTRYPOINT":
                state.entrypoint = command
                state.cmd = None  # as Docker: a new ENTRYPOINT drops the inherited CMD
            else:
                state.cmd = command

    # -- RUN ---------------------------------------------------------------------------------

    async def _run(self, instruction: Instruction, state: ImageState, variables: dict[str, str]) -> None:
        argv = instruction.json_list()
        if argv is None:
            argv = [*state.shell, instruction.text]
        if instruction.flags:
            raise StepImageError(f"{instruction.where()}: RUN flags are not supported")
        config: dict[str, Any] = {
            "Image": state.image,
            "Entrypoint": argv,
            "Cmd": [],
            # Build arguments are in RUN's environment, not in the image's.
            "Env": [f"{k}={v}" for k, v in {**variables, **state.env}.items()],
            "WorkingDir": state.workdir or "/",
            "User": state.user,
            "Labels": self._container_labels(state),
            "HostConfig": self.run_host,
        }
        tail: list[str] = []

        def output(stream: str, line: str) -> None:
            self.progress(line)
            tail.append(line)
            del tail[:-TAIL_LINES]

        snapshot: list[str] = []

        async def exited(container: Any, result: ExecResult) -> None:
            if result.exit_code == 0:
                snapshot.append(await self._snapshot(container.id, state))

        result, _ = await steps.run(
            self.docker,
            config,
            name=self._name("run"),
            timeout=RUN_TIMEOUT,
            output=output,
            cancel=asyncio.Event(),
            lines=self.lines,
            started=self.started,
            finished=self.finished,
            exited=exited,
        )
        if result.exit_code != 0 or not snapshot:
            why = result.error or f"exit code {result.exit_code}"
            last = "\n".join(tail)
            raise StepImageError(
                f"cannot build {self.dockerfile_name}: {instruction.where()} failed ({why})"
                + (f"\nits last lines:\n{last}" if last else "")
            )
        state.image = await self._commit(state, base=snapshot[0])

    async def _snapshot(self, container_id: str, state: ImageState) -> str:
        """The container's file system as an image of its own, owners as the container saw them."""
        with tempfile.TemporaryFile(prefix="spindle-export-") as raw:
            total = 0
            async with self.docker._query(
                f"containers/{container_id}/export",
                "GET",
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            ) as response:
                async for chunk in response.content.iter_chunked(1 << 20):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise StepImageError(
                            f"cannot build {self.dockerfile_name}: the image grew past "
                            f"{self.max_bytes >> 20} MiB"
                        )
                    await asyncio.to_thread(raw.write, chunk)
            raw.seek(0)
            with tempfile.TemporaryFile(prefix="spindle-layer-") as shifted:
                try:
                    await asyncio.to_thread(shift_owners, raw, shifted, self.idmap)
                except tarfile.TarError as exc:
                    raise StepImageError(
                        f"cannot build {self.dockerfile_name}: the engine's export of the file "
                        f"system is not readable ({exc}; {total} bytes)"
                    ) from None
                raw.truncate(0)
                shifted.seek(0)
                # One `changes` only (Podman keeps the last): the labels, so reap finds the image.
                # Only values without spaces (ids); the commit after it adds the job's key.
                labels = " ".join(
                    f"{k}={v}" for k, v in self.labels.items() if v and not any(c.isspace() for c in v)
                )
                async with self.docker._query(
                    "images/create",
                    "POST",
                    params={"fromSrc": "-", "changes": f"LABEL {labels}"},
                    data=build._chunks(shifted),
                    headers={"Content-Type": "application/x-tar"},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                ) as response:
                    text = await response.text()
        image = ""
        for line in text.splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(line)
                if message.get("error"):
                    raise StepImageError(f"cannot build {self.dockerfile_name}: {message['error']}")
                image = message.get("id") or message.get("status") or image
        if not image:
            raise StepImageError(f"cannot build {self.dockerfile_name}: the engine named no imported image")
        self.made.append(image)
        return image

    # -- COPY / ADD --------------------------------------------------------------------------

    async def _copy(self, instruction: Instruction, state: ImageState, scope: dict[str, str]) -> None:
        unknown = set(instruction.flags) - {"chown", "chmod"}
        if unknown:
            flag = sorted(unknown)[0]
            why = "copying from another stage or image" if flag == "from" else f"--{flag}"
            raise StepImageError(f"{instruction.where()}: {why} is not supported")
        words = instruction.json_list() or dockerfile.substitute(instruction.text, scope).split()
        if len(words) < 2:
            raise StepImageError(f"{instruction.where()}: expected sources and a destination")
        *sources, dest = words
        for source in sources:
            if "://" in source:
                raise StepImageError(f"{instruction.where()}: URLs are not supported ({source})")
            if instruction.name == "ADD" and source.lower().endswith(_ARCHIVES):
                raise StepImageError(
                    f"{instruction.where()}: unpacking {source} is not supported; COPY it and RUN tar"
                )
        owner = _owner(instruction, dockerfile.substitute(instruction.flags.get("chown", "0:0"), scope))
        mode = _mode(instruction)
        if not posixpath.isabs(dest):
            dest = posixpath.join(state.workdir or "/", dest)
        with tempfile.TemporaryFile(prefix="spindle-copy-") as out:

            async def files(container: Any) -> IO[bytes]:
                # `COPY file /existing/directory` copies into it, as Docker does.
                into = dest.endswith("/") or len(sources) > 1 or await self._is_directory(container, dest)
                await asyncio.to_thread(self._copy_tar, instruction, sources, dest, into, owner, mode, out)
                out.seek(0)
                return out

            state.image = await self._commit(state, files=files)

    async def _is_directory(self, container: Any, path: str) -> bool:
        try:
            async with self.docker._query(
                f"containers/{container.id}/archive", "HEAD", params={"path": path}
            ) as response:
                header = response.headers.get("X-Docker-Container-Path-Stat", "")
        except (DockerError, ValueError):
            return False  # not there (aiodocker reads a HEAD's empty error body as JSON)
        try:
            mode = int(json.loads(base64.b64decode(header)).get("mode", 0))
        except (ValueError, TypeError, AttributeError):
            return False
        return bool(mode & (1 << 31))  # Go's os.ModeDir

    def _copy_tar(
        self,
        instruction: Instruction,
        sources: list[str],
        dest: str,
        into_directory: bool,
        owner: tuple[int, int],
        mode: int | None,
        out: IO[bytes],
    ) -> None:
        self.archive.file.seek(0)
        with (
            tarfile.open(fileobj=self.archive.file, mode="r:") as context,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as target,
        ):
            members = context.getmembers()
            for source in sources:
                pattern = posixpath.normpath(source.lstrip("/"))
                if pattern.startswith(".."):
                    raise StepImageError(f"{instruction.where()}: {source} is outside the action's directory")
                wildcard = any(char in pattern for char in "*?[")
                # As Go's filepath.Match: a wildcard does not cross `/`.
                depth = pattern.count("/")
                matched = [
                    m
                    for m in members
                    if pattern == "." or (m.name.count("/") == depth and fnmatch.fnmatchcase(m.name, pattern))
                ]
                if not matched:
                    raise StepImageError(f"{instruction.where()}: the action's directory has no {source}")
                for member in matched if pattern != "." else [None]:
                    if member is None or member.isdir():
                        prefix = "" if member is None else member.name + "/"
                        root = dest
                        for inner in members:
                            if prefix and not inner.name.startswith(prefix):
                                continue
                            relative = inner.name[len(prefix) :]
                            self._add(context, target, inner, posixpath.join(root, relative), owner, mode)
                    else:
                        name = (
                            posixpath.join(dest, posixpath.basename(member.name))
                            if into_directory or wildcard
                            else dest
                        )
                        self._add(context, target, member, name, owner, mode)

    @staticmethod
    def _add(
        context: tarfile.TarFile,
        target: tarfile.TarFile,
        member: tarfile.TarInfo,
        name: str,
        owner: tuple[int, int],
        mode: int | None,
    ) -> None:
        entry = copy.copy(member)
        entry.name = posixpath.normpath(name).lstrip("/")
        if not entry.name or entry.name == ".":
            return
        entry.uid, entry.gid = owner
        entry.uname = entry.gname = ""
        if mode is not None and not entry.issym():
            entry.mode = mode
        target.addfile(entry, context.extractfile(member) if member.isreg() else None)

    # -- images ------------------------------------------------------------------------------

    async def _commit(
        self,
        state: ImageState,
        *,
        base: str | None = None,
        files: Callable[[Any], Awaitable[IO[bytes]]] | None = None,
        tag: str | None = None,
    ) -> str:
        """A container of `base` (the current image) that is created, given the tar `files` makes
        for it, and committed with the state's configuration; never started."""
        config: dict[str, Any] = {
            "Image": base or state.image,
            "Entrypoint": ["/nonexistent"],
            "Cmd": [],
            "Env": [f"{k}={v}" for k, v in state.env.items()],
            "WorkingDir": state.workdir or "/",
            "User": state.user,
            "Labels": self._container_labels(state),
            "HostConfig": self.helper_host,
        }
        try:
            container = await self.docker.containers.create(config, name=self._name("commit"))
        except DockerError as exc:
            raise StepImageError(f"cannot build {self.dockerfile_name}: {exc.message}") from None
        self.started(container.id)
        try:
            if files is not None:
                await container.put_archive("/", await files(container))
            params: CIMultiDict[str] = CIMultiDict(
                container=container.id, changes=state.changes(), pause="false"
            )
            if tag is not None:
                repository, _, name = tag.rpartition(":")
                params.update(repo=repository, tag=name)
            async with self.docker._query(
                "commit",
                "POST",
                params=params,
                data="{}",
                headers={"Content-Type": "application/json"},
            ) as response:
                image = str((await response.json()).get("Id") or "")
        except DockerError as exc:
            raise StepImageError(f"cannot build {self.dockerfile_name}: {exc.message}") from None
        finally:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)
            self.finished(container.id)
        if not image:
            raise StepImageError(f"cannot build {self.dockerfile_name}: the engine named no committed image")
        self.made.append(image)
        return image

    def _container_labels(self, state: ImageState) -> dict[str, str]:
        return {**state.labels, **self.labels}

    def _name(self, what: str) -> str:
        self._count += 1
        return f"{self.name}-{what}-{self._count}"[:120]

    async def _discard(self, images: list[str]) -> None:
        for image in reversed(images):
            with contextlib.suppress(DockerError):
                await self.docker.images.delete(image, force=True)


def _owner(instruction: Instruction, text: str) -> tuple[int, int]:
    user, _, group = text.partition(":")
    group = group or user
    if not (user.isdigit() and group.isdigit()):
        raise StepImageError(f"{instruction.where()}: --chown takes numeric ids here (uid:gid), not {text!r}")
    return int(user), int(group)


def _mode(instruction: Instruction) -> int | None:
    text = instruction.flags.get("chmod")
    if text is None:
        return None
    try:
        return int(text, 8) & 0o7777
    except ValueError:
        raise StepImageError(f"{instruction.where()}: --chmod takes an octal mode, not {text!r}") from None
