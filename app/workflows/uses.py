"""`uses:` references, read the way GitHub reads them.

    owner/repo[/path]@ref                 RepositoryAction, from the spindle's actions server
    https://host/owner/repo[/path]@ref    RepositoryAction, from https://host
    ./path                                LocalAction, a directory of the job's workspace
    docker://image                        DockerImage

A step's `uses` may be any of them; a job's `uses` (a reusable workflow) is a repository or a
local path. Anything else raises WorkflowError naming the key, the text and the forms allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import is_valid_host
from app.workflows.exceptions import WorkflowError

FORMS = "owner/repo[/path]@ref, https://host/owner/repo[/path]@ref, ./path or docker://image"


@dataclass(frozen=True)
class RepositoryAction:
    text: str  # as written in the file
    owner: str
    repo: str
    path: str  # inside the repository, "" for its root
    ref: str  # a tag, branch or commit
    server: str | None = None  # "https://host" when the reference names one

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class LocalAction:
    text: str
    path: str  # relative to the workspace, "" for the workspace itself

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class DockerImage:
    text: str
    image: str

    def __str__(self) -> str:
        return self.text


Uses = RepositoryAction | LocalAction | DockerImage


class _Malformed(Exception):
    """Why a text is not a reference (parse_uses adds where, the text and the forms allowed)."""


def parse_uses(text: str, where: str, *, job: bool = False) -> Uses:
    """The reference `text` at `where` (a step's, or with `job` a job's reusable workflow)."""
    try:
        return _read(text, job=job)
    except _Malformed as exc:
        raise WorkflowError(f"{where}: {exc} in {text!r}: expected {FORMS}") from None


def _read(text: str, *, job: bool) -> Uses:
    if not text:
        raise _Malformed("nothing is named")
    if any(char.isspace() for char in text):
        raise _Malformed("white space")
    if text.startswith("docker://"):
        if job:
            raise _Malformed("a job calls a reusable workflow, not an image")
        image = text.removeprefix("docker://")
        if not image:
            raise _Malformed("no image")
        return DockerImage(text, image)
    if text.startswith("./"):
        parts = [part for part in text[2:].split("/") if part not in ("", ".")]
        if ".." in parts:
            raise _Malformed("a path that leaves the workspace")
        return LocalAction(text, "/".join(parts))
    server = None
    rest = text
    if text.startswith("http://"):
        raise _Malformed("http:// (use https://)")
    if text.startswith("https://"):
        host, _, rest = text.removeprefix("https://").partition("/")
        if not is_valid_host(host):
            raise _Malformed(f"the host {host!r}")
        server = f"https://{host}"
    name, at, ref = rest.partition("@")
    if not at or not ref:
        raise _Malformed("no @ref (a tag, branch or commit)")
    if "@" in ref:
        raise _Malformed("more than one @")
    parts = name.split("/")
    if len(parts) < 2 or any(part in ("", ".", "..") for part in parts):
        raise _Malformed("no owner/repo before @")
    return RepositoryAction(text, parts[0], parts[1], "/".join(parts[2:]), ref, server)
