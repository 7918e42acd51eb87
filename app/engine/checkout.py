"""`uses: actions/checkout@<any version>`: the repo at the run's exact commit, from the knot.

The spindle fetches the commit on the host (app/engine/fetch.py: git init + fetch only, nothing
of the repository runs there), streams the resulting `.git` directory into the job's container
at `<path>/.git`, and the files are checked out inside the container with the image's git. An
image without git gets the files alone, from `git archive` on the host. A ref that does not
resolve to the run's commit fails the step.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.workflows.expressions import to_string
from app.workflows.uses import RepositoryAction, Uses

SUPPORTED_INPUTS = {"path", "ref", "fetch-depth", "repository"}
# Inputs that make no difference here (no token to persist, no LFS server, no submodule access).
IGNORED_INPUTS = {"token", "ssh-key", "persist-credentials", "clean", "lfs", "submodules", "show-progress",
                  "fetch-tags", "sparse-checkout", "sparse-checkout-cone-mode", "set-safe-directory",
                  "filter", "ssh-known-hosts", "ssh-strict", "ssh-user", "github-server-url"}  # fmt: skip
TARGET_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64}|(?!-)[\w./-]{1,255})\Z")


class CheckoutError(ValueError):
    """A `with:` the checkout cannot honour; the message names the input."""


@dataclass(frozen=True)
class CheckoutPlan:
    url: str  # the knot's git endpoint for the repo
    target: str  # a commit id, branch or tag
    depth: int  # 0: all history
    dest: str  # a path inside the job's container
    notes: list[str]


def is_checkout(uses: Uses) -> bool:
    """`actions/checkout@<any ref>` from the default actions server."""
    return (
        isinstance(uses, RepositoryAction)
        and uses.server is None
        and (uses.owner.lower(), uses.repo.lower(), uses.path) == ("actions", "checkout", "")
    )


def plan_checkout(
    *, with_: Mapping[str, Any], workspace: str, clone_url: str, sha: str, repository: str
) -> CheckoutPlan:
    """What to fetch and where it goes, from the step's `with:`; CheckoutError names a bad input."""
    notes = [f"with.{key} is ignored by this spindle" for key in with_ if key in IGNORED_INPUTS]
    unknown = [key for key in with_ if key not in SUPPORTED_INPUTS | IGNORED_INPUTS]
    notes += [f"with.{key} is not an input of actions/checkout; ignored" for key in unknown]
    other = to_string(with_.get("repository") or "").strip()
    if other and other.casefold() != repository.casefold():
        raise CheckoutError(
            f"with.repository {other!r}: only the run's own repository ({repository}) can be checked out"
        )
    target = to_string(with_.get("ref") or "").strip() or sha
    if re.fullmatch(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}", target):
        target = target.lower()
    if not TARGET_RE.match(target) or ".." in target:
        raise CheckoutError(f"with.ref {target!r} is not a commit id, branch or tag name")
    depth_raw = with_.get("fetch-depth", 1)
    depth = to_string(depth_raw).strip() if depth_raw is not None else "1"
    if not depth.isdigit():
        raise CheckoutError(f"with.fetch-depth must be a whole number, got {depth!r}")
    relative = to_string(with_.get("path") or "").strip()
    dest = posixpath.normpath(posixpath.join(workspace, relative)) if relative else workspace
    if dest != workspace and not dest.startswith(workspace + "/"):
        raise CheckoutError(f"with.path {relative!r} must stay inside the workspace")
    return CheckoutPlan(url=clone_url, target=target, depth=int(depth), dest=dest, notes=notes)
