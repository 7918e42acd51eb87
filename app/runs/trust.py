"""Whether a run's code comes from the repo itself: only then does it get the repo's secrets.

A pull request from a fork runs code its author controls; on GitHub it gets no secrets, and here
neither. Tangled's trigger metadata names the repo the code is checked out from as `sourceRepo` (a
DID; sh.tangled.pipeline, 2026: "when different from repo (e.g. a fork's commit ...)"). When it is
set and is not the pipeline's repo, the code is a fork's. A `sourceRepo` that is not a string is
treated as a fork's too (fail closed).

Knot-dispatched `sh.tangled.pipeline` events of older knots carry no `sourceRepo`: their pull
requests are treated as coming from the repo itself, as Tangled's own spindle treats them (it
gives every pipeline of a repo that repo's secrets); docs/secrets.md says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Triggered(Protocol):
    """A pipeline row, or the RunSpec made from one."""

    @property
    def repo_did(self) -> str: ...

    @property
    def trigger(self) -> Mapping[str, Any]: ...


def _source_repos(trigger: Mapping[str, Any]) -> list[object]:
    found = []
    if "sourceRepo" in trigger:
        found.append(trigger["sourceRepo"])
    pr = trigger.get("pullRequest")
    if isinstance(pr, Mapping) and "sourceRepo" in pr:
        found.append(pr["sourceRepo"])
    return found


def _own_dids(pipeline: Triggered) -> set[str]:
    """The DIDs that name the repo itself: the pipeline's, and the trigger's `repo.did` / `repo.repoDid`."""
    own = {pipeline.repo_did}
    repo = pipeline.trigger.get("repo") if isinstance(pipeline.trigger, Mapping) else None
    if isinstance(repo, Mapping):
        own |= {v for k in ("did", "repoDid") if isinstance(v := repo.get(k), str) and v}
    return own


def code_is_from_repo(pipeline: Triggered) -> bool:
    """False when the trigger says the code comes from another repo (a fork); True otherwise."""
    trigger = pipeline.trigger
    if not isinstance(trigger, Mapping):
        return True
    own = _own_dids(pipeline)
    for source in _source_repos(trigger):
        if source is None or source == "":
            continue
        if not isinstance(source, str) or source not in own:
            return False
    return True
