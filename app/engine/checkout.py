"""`uses: actions/checkout@<any version>`: the repo at the run's exact commit, from the knot.

Two processes, because only the first may use the network:
1. fetch (network): `git fetch --depth=1 <knot>/<did>/<name> <sha>` (git's protocol v2 allows
   any reachable commit; a server that refuses gets a fetch of its branches and tags instead)
   into a brand-new repository under a random name, with an environment built from nothing, an
   absolute git, no hooks and no global or system git config. Nothing an earlier step left
   behind (a `.git/hooks` script, `~/.gitconfig`, LD_PRELOAD through GITHUB_ENV, a fake `git`
   through GITHUB_PATH) can run while the network is open.
2. place (offline): that repository becomes `<path>/.git` and the commit is checked out
   detached; a ref that does not resolve to the commit fails the step.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.sandbox import base_environment
from app.workflows.expressions import to_string
from app.workflows.uses import RepositoryAction, Uses

SUPPORTED_INPUTS = {"path", "ref", "fetch-depth", "repository"}
# Inputs that make no difference here (no token to persist, no LFS server, no submodule access).
IGNORED_INPUTS = {"token", "ssh-key", "persist-credentials", "clean", "lfs", "submodules", "show-progress",
                  "fetch-tags", "sparse-checkout", "sparse-checkout-cone-mode", "set-safe-directory",
                  "filter", "ssh-known-hosts", "ssh-strict", "ssh-user", "github-server-url"}  # fmt: skip
TARGET_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64}|(?!-)[\w./-]{1,255})\Z")

FETCH_SCRIPT = r"""
set -e
git=$1 url=$2 target=$3 depth=$4 fresh=$5
"$git" init -q "$fresh"
cd "$fresh"
deepen=--depth=$depth
[ "$depth" = 0 ] && deepen=
echo "Fetching $target from $url"
if "$git" -c protocol.version=2 fetch --no-tags $deepen "$url" "$target"; then
  commit=$("$git" rev-parse --verify FETCH_HEAD^{commit})
else
  echo "the knot refused a fetch of $target itself; fetching its branches and tags instead"
  "$git" fetch --no-tags "$url" '+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*'
  commit=$("$git" rev-parse --verify --quiet "refs/remotes/origin/$target^{commit}" ||
           "$git" rev-parse --verify --quiet "$target^{commit}") || {
    echo "error: the knot has no commit, branch or tag $target" >&2
    exit 1
  }
fi
case "$target" in
  *[!0-9a-f]*) ;;
  *) [ "$commit" = "$target" ] || { echo "error: the knot does not have commit $target" >&2; exit 1; } ;;
esac
echo "$commit" > .git/spindle-checkout
"""

PLACE_SCRIPT = r"""
set -e
git=$1 fresh=$2 dest=$3
commit=$(cat "$fresh/.git/spindle-checkout")
rm -f "$fresh/.git/spindle-checkout"
rm -rf "$dest/.git"
mv "$fresh/.git" "$dest/.git"
rmdir "$fresh"
cd "$dest"
"$git" config advice.detachedHead false
"$git" checkout -q -f --detach "$commit"
"$git" log -1 --format='HEAD is now at %h %s'
"""


class CheckoutError(ValueError):
    """A `with:` the checkout cannot honour; the message names the input."""


@dataclass(frozen=True)
class CheckoutPlan:
    fetch: list[str]  # runs with the network
    place: list[str]  # runs without it
    env: dict[str, str]  # for both: nothing from the workflow or earlier steps
    dest: Path
    notes: list[str]


def is_checkout(uses: Uses) -> bool:
    """`actions/checkout@<any ref>` from the default actions server."""
    return (
        isinstance(uses, RepositoryAction)
        and uses.server is None
        and (uses.owner.lower(), uses.repo.lower(), uses.path) == ("actions", "checkout", "")
    )


def checkout_env(home: Path) -> dict[str, str]:
    """A git environment no earlier step can influence."""
    return {
        **base_environment(home=home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.hooksPath",
        "GIT_CONFIG_VALUE_0": "/dev/null",
    }


def plan_checkout(
    *,
    with_: Mapping[str, Any],
    workspace: Path,
    scratch: Path,
    clone_url: str,
    sha: str,
    repository: str,
) -> CheckoutPlan:
    """The two commands that check the commit (or `with.ref`) out into the workspace."""
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
    dest = (workspace / relative).resolve() if relative else workspace
    if dest != workspace and workspace not in dest.parents:
        raise CheckoutError(f"with.path {relative!r} must stay inside the workspace")
    git = shutil.which("git", path=base_environment(home=scratch)["PATH"])
    if git is None:
        raise CheckoutError("git is not installed on this spindle")
    # A name no earlier step could have guessed and prepared.
    fresh = scratch / f"checkout-{uuid.uuid4().hex}"
    home = scratch / f"home-{uuid.uuid4().hex}"
    return CheckoutPlan(
        fetch=["sh", "-c", FETCH_SCRIPT, "checkout", git, clone_url, target, str(int(depth)), str(fresh)],
        place=["sh", "-c", PLACE_SCRIPT, "checkout", git, str(fresh), str(dest)],
        env=checkout_env(home),
        dest=dest,
        notes=notes,
    )
