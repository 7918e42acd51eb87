"""Current knots: `sh.tangled.git.refUpdate` starts the workflows whose `on: push` matches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from app.runs.models import Pipeline
from tests.events.conftest import EventKnot, Spindle, eventually, minted
from tests.support.knot import GitRepo
from tests.support.knot_events import ZERO_SHA, ref_update_event


def _skipped_job(on: str) -> str:
    # Jobs that are skipped: the run succeeds without a sandbox, so only the choice is tested.
    job = "jobs:\n  nothing:\n    if: ${{ false }}\n    runs-on: ubuntu-latest\n    steps: [{run: 'true'}]\n"
    return f"{on}\n{job}"


FILTERED_WORKFLOWS = {
    ".github/workflows/main_only.yml": _skipped_job("on:\n  push:\n    branches: [main]"),
    ".github/workflows/not_main.yml": _skipped_job("on:\n  push:\n    branches-ignore: [main]"),
    ".github/workflows/tags.yml": _skipped_job("on:\n  push:\n    tags: ['v*']"),
    ".github/workflows/docs.yaml": _skipped_job("on:\n  push:\n    branches: [main]\n    paths: ['docs/**']"),
    ".github/workflows/dispatch.yml": _skipped_job("on: workflow_dispatch"),
    ".github/workflows/pr_main.yml": _skipped_job("on:\n  pull_request:\n    branches: [main]"),
    ".github/workflows/pr_release.yml": _skipped_job("on:\n  pull_request:\n    branches: [release]"),
    ".github/workflows/broken.yml": "on: [push\n",
    "docs/index.md": "docs\n",
}


@dataclass
class Pushed:
    host: str
    git: GitRepo
    sha: str
    event_knot: EventKnot

    def emit(self, event: dict[str, Any]) -> str:
        return self.event_knot.stream.emit(event, nsid="sh.tangled.git.refUpdate")


@pytest.fixture
async def pushed(spindle: Spindle, event_knot: EventKnot) -> Pushed:
    git = event_knot.knot.create_repo(event_knot.repo.did, "filters")
    sha = git.commit(FILTERED_WORKFLOWS)
    await spindle.register(event_knot.host, git)
    await spindle.connected(event_knot.host)
    return Pushed(event_knot.host, git, sha, event_knot)


def _names(pipeline: Pipeline) -> list[str]:
    return sorted(run.name for run in pipeline.workflow_runs)


async def _handled(spindle: Spindle, knot: str, rkey: str) -> None:
    async def moved() -> bool:
        return await spindle.cursor(knot) == minted(rkey)

    await eventually(moved, what=f"the knot cursor to move past {rkey}")


async def test_a_push_to_main_runs_only_the_workflows_whose_push_filters_match(
    spindle: Spindle, pushed: Pushed
):
    rkey = pushed.emit(ref_update_event(pushed.git, pushed.sha))

    pipeline = await spindle.recorded(pushed.host, rkey)

    # The knot names no changed files: the paths filter of docs.yaml lets it through.
    assert _names(pipeline) == ["docs", "main_only"]
    assert (pipeline.trigger_kind, pipeline.sha, pipeline.actor) == ("push", pushed.sha, None)
    assert pipeline.trigger["push"] == {"ref": "refs/heads/main", "newSha": pushed.sha, "oldSha": ZERO_SHA}
    assert pipeline.trigger["repo"] == {"knot": pushed.host, "did": pushed.git.did, "repo": "filters"}
    for name in ("docs", "main_only"):
        assert (await spindle.finished(pushed.host, rkey, name))["status"] == "success"


async def test_a_push_to_another_branch_runs_the_workflows_that_ignore_main(spindle: Spindle, pushed: Pushed):
    rkey = pushed.emit(ref_update_event(pushed.git, pushed.sha, ref="refs/heads/feature"))

    assert _names(await spindle.recorded(pushed.host, rkey)) == ["not_main"]


async def test_a_tag_push_runs_only_the_tag_workflows(spindle: Spindle, pushed: Pushed):
    rkey = pushed.emit(ref_update_event(pushed.git, pushed.sha, ref="refs/tags/v1.0"))

    assert _names(await spindle.recorded(pushed.host, rkey)) == ["tags"]


@pytest.mark.parametrize(
    ("changed", "expected"), [(["src/app.py"], ["main_only"]), (["docs/a.md"], ["docs", "main_only"])]
)
async def test_changed_files_from_a_current_knot_decide_the_paths_filters(
    spindle: Spindle, pushed: Pushed, changed: list[str], expected: list[str]
):
    # The 2026 shape: the repo named by its own DID (here registered as the repo's DID), changedFiles.
    event = ref_update_event(pushed.git, pushed.sha, repo_did=pushed.git.did, changed_files=changed)

    rkey = pushed.emit(event)

    assert _names(await spindle.recorded(pushed.host, rkey)) == expected


async def test_a_deleted_ref_runs_nothing(spindle: Spindle, pushed: Pushed):
    rkey = pushed.emit(ref_update_event(pushed.git, ZERO_SHA, old_sha=pushed.sha, ref="refs/heads/old"))

    await _handled(spindle, pushed.host, rkey)
    assert await spindle.pipelines() == []


async def test_a_push_asking_to_skip_ci_runs_nothing(spindle: Spindle, pushed: Pushed):
    event = ref_update_event(pushed.git, pushed.sha)
    event["pushOptions"] = ["skip-ci"]

    rkey = pushed.emit(event)

    await _handled(spindle, pushed.host, rkey)
    assert await spindle.pipelines() == []


async def test_a_push_to_a_repo_that_is_not_served_runs_nothing(spindle: Spindle, pushed: Pushed):
    other = pushed.event_knot.knot.create_repo("did:plc:strangeraaaaaaaaaaaaaaaa", "filters")
    sha = other.commit(FILTERED_WORKFLOWS)

    rkey = pushed.emit(ref_update_event(other, sha))

    await _handled(spindle, pushed.host, rkey)
    assert await spindle.pipelines() == []


async def test_a_push_whose_workflows_match_nothing_records_nothing(spindle: Spindle, pushed: Pushed):
    rkey = pushed.emit(ref_update_event(pushed.git, pushed.sha, ref="refs/tags/release-1"))

    await _handled(spindle, pushed.host, rkey)
    assert await spindle.pipelines() == []


async def test_pushes_while_the_spindle_was_down_run_exactly_once_after_a_restart(
    make_spindle: Callable[..., Any], event_knot: EventKnot
):
    git = event_knot.knot.create_repo(event_knot.repo.did, "filters")
    sha = git.commit(FILTERED_WORKFLOWS)
    stream, knot = event_knot.stream, event_knot.host
    async with make_spindle() as first:
        await first.register(knot, git)
        await first.connected(knot)
        before = stream.emit(ref_update_event(git, sha), nsid="sh.tangled.git.refUpdate")
        await first.recorded(knot, before)

    while_down = stream.emit(
        ref_update_event(git, sha, ref="refs/heads/feature"), nsid="sh.tangled.git.refUpdate"
    )

    async with make_spindle() as second:
        assert _names(await second.recorded(knot, while_down)) == ["not_main"]
        after = stream.emit(ref_update_event(git, sha, ref="refs/tags/v2"), nsid="sh.tangled.git.refUpdate")
        await second.recorded(knot, after)
        # The resume rewound past `before`: it was seen again and recorded nothing more.
        assert [p.rkey for p in await second.pipelines()] == [before, while_down, after]
