"""Images for jobs: a local one as is, a missing one pulled, the runner image built from Debian packages.

    await ensure_image(docker, "node:20", progress=say)          # local, else pulled
    image = DebianImage("localhost/spindle-test", ("bash", "git"))
    await ensure_built(docker, image, progress=say)              # built once, then found by its tag
    await ensure_default_runner_image(docker, settings=settings, progress=log.info)

A Debian image is a root file system made by mmdebstrap (no registry, no Dockerfile), imported
through the Docker Engine API, so that Docker and Podman take it alike. Its tag carries a digest of
what went into it (suite, packages, recipe), so a changed package list is a new image.

Errors: ImageError → ImagePullFailed (a missing image could not be pulled) | ImageBuildFailed
(mmdebstrap or the import failed). Each message names the image.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiodocker
import aiohttp

from app.config import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

SUITE = "bookworm"
# Bumped when the way an image is made changes (mmdebstrap options, image config): a new tag.
RECIPE_VERSION = 2
RUNNER_REPOSITORY = "localhost/spindle-runner"
# What GitHub's runners offer that most workflows assume, from Debian's archive.
RUNNER_PACKAGES: tuple[str, ...] = (
    "bash",
    "build-essential",
    "ca-certificates",
    "curl",
    "git",
    "gnupg",
    "jq",
    "nodejs",
    "openssh-client",
    "procps",
    "python3",
    "python3-pip",
    "python3-venv",
    "sudo",
    "unzip",
    "wget",
    "xz-utils",
    "zip",
    "zstd",
)
# Dockerfile instructions applied on import: a job names its command anyway.
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["bash"]',
)
# On every image built here: what went into it, so that `ensure_default_runner_image` can tell
# whether the image under the configured tag still has every package the runner image needs.
PACKAGES_LABEL = "sh.tangled.spindle.packages"
RECIPE_LABEL = "sh.tangled.spindle.recipe"
# Documentation and translations are a third of an image and no job reads them.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
_CHUNK = 1 << 20
# Debian policy's package name (and an optional :arch): nothing mmdebstrap would read as an option
# or split at a comma.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?\Z")
# A Docker image reference: [host[:port]/]path[:tag], lower-case path components.
IMAGE_REF_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?\Z"
)


class ImageError(RuntimeError):
    """An image a job or the service needs is not there and could not be made."""


class ImagePullFailed(ImageError):
    """Raised by ensure_image() when a missing image cannot be pulled (registry, name, credentials)."""


class ImageBuildFailed(ImageError):
    """Raised by build() when mmdebstrap fails or the engine refuses the import."""


@dataclass(frozen=True)
class DebianImage:
    """An image made of Debian packages: `repository:<suite>-<digest of what goes in>`."""

    repository: str
    packages: tuple[str, ...]
    suite: str = SUITE

    @property
    def tag(self) -> str:
        recipe = json.dumps(
            {
                "suite": self.suite,
                "packages": sorted(set(self.packages)),
                "recipe": RECIPE_VERSION,
                "changes": IMAGE_CHANGES,
                "dpkg": _DPKG_EXCLUDES,
            }
        )
        return f"{self.repository}:{self.suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"

    @property
    def labels(self) -> dict[str, str]:
        return {PACKAGES_LABEL: " ".join(sorted(set(self.packages))), RECIPE_LABEL: self.recipe}

    @property
    def recipe(self) -> str:
        return f"{self.suite}/{RECIPE_VERSION}"

    def is_built_by(self, config: Mapping[str, Any]) -> bool:
        """True for an image config made by this recipe with at least these packages."""
        labels = config.get("Labels") or {}
        packages = set(labels.get(PACKAGES_LABEL, "").split())
        return labels.get(RECIPE_LABEL) == self.recipe and packages >= set(self.packages)


RUNNER_IMAGE = DebianImage(RUNNER_REPOSITORY, RUNNER_PACKAGES)


async def image_exists(docker: aiodocker.Docker, ref: str) -> bool:
    try:
        await docker.images.inspect(ref)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def ensure_image(
    docker: aiodocker.Docker,
    ref: str,
    *,
    credentials: Mapping[str, str] | None = None,
    progress: Progress,
) -> None:
    """A local image is used as is; a missing one is pulled, one progress line per layer status."""
    if await image_exists(docker, ref):
        return
    name = qualified_name(ref)
    progress(f"pulling {name}")
    headers = {}
    if credentials:
        auth = {
            "username": credentials.get("username", ""),
            "password": credentials.get("password", ""),
            "serveraddress": name.split("/", 1)[0],
        }
        headers["X-Registry-Auth"] = base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()
    last: dict[str, str] = {}  # layer id → its last status: a line only when it changes
    try:
        async with docker._query(
            "images/create",
            "POST",
            params={"fromImage": name},
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        ) as response:
            async for message in _json_lines(response):
                if message.get("error"):
                    raise ImagePullFailed(f"cannot pull image {ref}: {message['error']}")
                status, layer = message.get("status", ""), message.get("id", "")
                if status and last.get(layer) != status:
                    last[layer] = status
                    progress(f"{layer}: {status}" if layer else status)
    except aiodocker.DockerError as exc:
        raise ImagePullFailed(f"cannot pull image {ref}: {exc.message}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ImagePullFailed(f"cannot pull image {ref}: the engine's connection failed: {exc}") from None
    # A stream that ends without an error is no proof: the image must be there now.
    if not await image_exists(docker, name):
        raise ImagePullFailed(f"cannot pull image {ref}: the engine reported no error but has no such image")
    progress(f"pulled {name}")


def qualified_name(ref: str) -> str:
    """`node:20` → `docker.io/library/node:20`; a name with a registry host is kept, a missing tag is
    `latest`. Docker Hub, as GitHub reads `container:`, whatever the engine's search registries."""
    first, slash, _ = ref.partition("/")
    if not slash:
        ref = f"docker.io/library/{ref}"
    elif not ("." in first or ":" in first or first == "localhost"):
        ref = f"docker.io/{ref}"
    last = ref.rsplit("/", 1)[1]
    if "@" not in last and ":" not in last:
        ref += ":latest"
    return ref


async def ensure_built(
    docker: aiodocker.Docker, image: DebianImage, *, progress: Progress, also_tag: Sequence[str] = ()
) -> str:
    """`image.tag`, built unless the engine has it; `also_tag` names point at it either way."""
    if await image_exists(docker, image.tag):
        for ref in also_tag:
            await _tag(docker, image.tag, ref)
        return image.tag
    return await build(docker, image, progress=progress, also_tag=also_tag)


async def ensure_default_runner_image(
    docker: aiodocker.Docker, *, settings: Settings, progress: Progress
) -> str | None:
    """Before the first job: build the default runner image if it is missing or lacks a package of
    RUNNER_PACKAGES (an image `spindle runner-image build --package` made with more is kept).
    Another SPINDLE_RUNNER_IMAGE is left to ensure_image() (pulled when a job needs it)."""
    if settings.runner_image != Settings.model_fields["runner_image"].default:
        return None
    try:
        config = (await docker.images.inspect(settings.runner_image))["Config"] or {}
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
        config = {}
    if RUNNER_IMAGE.is_built_by(config):
        return settings.runner_image
    progress(
        f"building the runner image {settings.runner_image} from Debian packages (a minute or two, once)"
    )
    await build(docker, RUNNER_IMAGE, progress=progress, also_tag=[settings.runner_image])
    return settings.runner_image


async def build(
    docker: aiodocker.Docker,
    image: DebianImage,
    *,
    progress: Progress,
    also_tag: Sequence[str] = (),
) -> str:
    """mmdebstrap a root file system into a temporary tar, import it, tag it `image.tag` and `also_tag`."""
    bad = [p for p in image.packages if not PACKAGE_RE.match(p)]
    if bad:
        raise ImageBuildFailed(f"cannot build {image.repository}: not Debian package names: {bad}")
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageBuildFailed(f"cannot build {image.tag}: mmdebstrap is not installed: run scripts/setup")
    with tempfile.TemporaryDirectory(prefix="spindle-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        argv = [
            mmdebstrap,
            "--variant=minbase",
            f"--include={','.join(sorted(set(image.packages)))}",
            *(f"--dpkgopt={option}" for option in _DPKG_EXCLUDES),
            image.suite,
            str(rootfs),
        ]
        progress(f"mmdebstrap {image.suite} with {len(set(image.packages))} packages")
        await _run(argv, progress=progress, what=image.tag)
        progress(f"importing {rootfs.stat().st_size >> 20} MiB into the engine")
        image_id = await _import(docker, rootfs, image)
    for ref in (image.tag, *also_tag):
        await _tag(docker, image_id, ref)
    progress(f"built {image.tag}" + "".join(f", tagged {ref}" for ref in also_tag))
    return image.tag


async def _run(argv: list[str], *, progress: Progress, what: str) -> None:
    """Run a build tool, each line of its output to `progress`; fail naming the image."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    tail: list[str] = []
    try:
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                progress(line)
                tail = [*tail[-4:], line]
        code = await process.wait()
    finally:
        if process.returncode is None:  # cancelled: leave nothing running
            process.kill()
            await process.wait()
    if code != 0:
        detail = "\n".join(tail)
        hint = "" if os.geteuid() == 0 else "\n(mmdebstrap needs root, or unprivileged user namespaces)"
        raise ImageBuildFailed(
            f"cannot build {what}: {Path(argv[0]).name} exited with {code}:\n{detail}{hint}"
        )


async def _import(docker: aiodocker.Docker, rootfs: Path, image: DebianImage) -> str:
    """POST /images/create?fromSrc=- with the tar as body; the new image's id.

    No repo/tag here: Podman's compat API ignores `tag` and would tag `:latest`; _tag() names it."""
    labels = [f"LABEL {key}={json.dumps(value)}" for key, value in image.labels.items()]
    query = urlencode([("fromSrc", "-"), *(("changes", change) for change in (*IMAGE_CHANGES, *labels))])
    what = image.tag
    image_id = ""
    try:
        async with docker._query(
            f"images/create?{query}",
            "POST",
            data=_read_chunks(rootfs),
            headers={"Content-Type": "application/x-tar"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        ) as response:
            async for message in _json_lines(response):
                if message.get("error"):
                    raise ImageBuildFailed(f"cannot import {what}: {message['error']}")
                # The last message names the image: Docker {"status": "sha256:..."}, Podman also "id".
                status = str(message.get("status", ""))
                if status.startswith("sha256:"):
                    image_id = status
    except aiodocker.DockerError as exc:
        raise ImageBuildFailed(f"cannot import {what}: {exc.message}") from None
    if not image_id:
        raise ImageBuildFailed(f"cannot import {what}: the engine did not name the imported image")
    return image_id


def split_ref(ref: str) -> tuple[str, str]:
    """`localhost:5000/name:tag` → (`localhost:5000/name`, `tag`); no tag → `latest`."""
    repository, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag:  # no tag, or the colon of `host:port/name`
        return ref, "latest"
    return repository, tag


async def _tag(docker: aiodocker.Docker, image: str, ref: str) -> None:
    repository, tag = split_ref(ref)
    await docker.images.tag(image, repository, tag=tag)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in 1 MiB chunks, each read off the event loop."""
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            yield chunk


async def _json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The engine's progress stream: one JSON object a line."""
    async for raw in response.content:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if isinstance(message, dict):
            yield message
