"""Which runs' code is the repo's own, and so gets the repo's secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from app.runs.trust import code_is_from_repo

REPO = "did:plc:repo0000000000000000000"


@dataclass
class Pipeline:
    trigger_kind: str
    trigger: dict[str, Any] = field(default_factory=dict)
    repo_did: str = REPO


@pytest.mark.parametrize(
    "pipeline",
    [
        Pipeline("push", {"push": {"ref": "refs/heads/main"}}),
        Pipeline("manual"),
        # Older knots' pull requests name no sourceRepo: the repo's own, as Tangled's spindle has it.
        Pipeline("pull_request", {"pullRequest": {"sourceBranch": "feature"}}),
        Pipeline("pull_request", {"sourceRepo": REPO, "pullRequest": {"sourceBranch": "feature"}}),
        Pipeline("pull_request", {"sourceRepo": "did:plc:ownrepo", "repo": {"repoDid": "did:plc:ownrepo"}}),
    ],
)
def test_code_of_the_repo_itself_is_trusted(pipeline: Pipeline) -> None:
    assert code_is_from_repo(pipeline)


@pytest.mark.parametrize(
    "pipeline",
    [
        Pipeline("pull_request", {"sourceRepo": "did:plc:forker", "pullRequest": {"sourceBranch": "x"}}),
        Pipeline("pull_request", {"pullRequest": {"sourceBranch": "x", "sourceRepo": "did:plc:forker"}}),
        Pipeline("manual", {"sourceRepo": "did:plc:forker"}),
        Pipeline("pull_request", {"sourceRepo": ["did:plc:forker"]}),
    ],
)
def test_code_from_a_fork_is_not_trusted(pipeline: Pipeline) -> None:
    assert not code_is_from_repo(pipeline)
