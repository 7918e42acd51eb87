"""Knots dispatching runs: a real git knot's `/events` stream, the spindle under uvicorn, both databases."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect

from app.knot import events as knot_events
from app.runs.models import StatusEvent, WorkflowRun
from tests.events.conftest import EventKnot, Spindle, eventually, make_event_knot, minted
from tests.support.knot import BRANCH
from tests.support.knot_events import (
    REF_UPDATE,
    Gate,
    manual_event,
    pull_request_event,
    push_event,
)


async def test_push_event_runs_the_matching_workflow_to_success(spindle: Spindle, registered: EventKnot):
    knot = registered.host

    rkey = registered.stream.emit(push_event(knot, registered.repo, registered.sha, workflows=["ci.yml"]))

    pipeline = await spindle.recorded(knot, rkey)
    assert (pipeline.repo_did, pipeline.repo_name, pipeline.sha) == (
        registered.repo.did,
        "hello",
        registered.sha,
    )
    assert (pipeline.trigger_kind, pipeline.actor) == ("push", None)
    assert pipeline.trigger["push"] == {
        "ref": "refs/heads/main",
        "newSha": registered.sha,
        "oldSha": "0" * 40,
    }
    assert [(run.name, run.path) for run in pipeline.workflow_runs] == [("ci", ".github/workflows/ci.yml")]
    status = await spindle.finished(knot, rkey, "ci")
    assert status["status"] == "success", status
    log_text = (await spindle.client.get(f"/logs/{knot}/{rkey}/ci")).text
    assert f"event=push ref=refs/heads/main sha={registered.sha}" in log_text
    assert "hello from the knot" in log_text


async def test_a_run_from_an_event_shows_up_on_the_spindles_events_stream(
    spindle: Spindle, registered: EventKnot
):
    knot = registered.host
    rkey = registered.stream.emit(push_event(knot, registered.repo, registered.sha, workflows=["quick"]))
    await spindle.finished(knot, rkey, "quick")
    uri = f"at://did:web:{knot.replace(':', '%3A')}/sh.tangled.pipeline/{rkey}"

    statuses: list[str] = []
    async with connect(f"ws://{spindle.settings.hostname}/events?cursor=0") as ws:
        while not statuses or statuses[-1] not in ("success", "failed"):
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if frame["event"]["pipeline"] == uri:
                statuses.append(frame["event"]["status"])

    assert statuses == ["pending", "running", "success"]


async def test_pull_request_event_runs_at_the_source_commit(spindle: Spindle, registered: EventKnot):
    git = registered.repo
    git.branch("feature")
    feature = git.commit({"README.md": "from the feature branch\n"}, message="feature work")
    knot = registered.host

    rkey = registered.stream.emit(pull_request_event(knot, git, feature, workflows=["ci.yml"]))

    pipeline = await spindle.recorded(knot, rkey)
    assert (pipeline.sha, pipeline.trigger_kind) == (feature, "pull_request")
    assert (await spindle.finished(knot, rkey, "ci"))["status"] == "success"
    log_text = (await spindle.client.get(f"/logs/{knot}/{rkey}/ci")).text
    assert f"event=pull_request ref=refs/heads/feature sha={feature}" in log_text
    assert "from the feature branch" in log_text


async def test_manual_event_runs_at_the_default_branch_head_with_its_inputs(
    spindle: Spindle, registered: EventKnot
):
    knot = registered.host
    head = registered.repo.commit({"NOTES": "newer\n"}, message="the head of main")

    rkey = registered.stream.emit(
        manual_event(knot, registered.repo, inputs={"target": "staging"}, workflows=["deploy.yml"])
    )

    pipeline = await spindle.recorded(knot, rkey)
    assert (pipeline.sha, pipeline.trigger_kind, pipeline.trigger["ref"]) == (
        head,
        "manual",
        "refs/heads/main",
    )
    [run] = pipeline.workflow_runs
    assert (run.path, run.inputs) == (
        ".github/workflows/deploy.yaml",
        {"target": "staging", "dry_run": "true"},
    )
    assert (await spindle.finished(knot, rkey, "deploy"))["status"] == "success"
    log_text = (await spindle.client.get(f"/logs/{knot}/{rkey}/deploy")).text
    assert "target=staging dry_run=true kind=manual" in log_text
    assert registered.knot.xrpc_requests(BRANCH)[-1].query["name"] == "main"


async def test_redelivered_event_records_nothing_and_asks_the_knot_nothing(
    spindle: Spindle, registered: EventKnot
):
    knot, stream, git = registered.host, registered.stream, registered.repo
    event = push_event(knot, git, registered.sha, workflows=["quick.yml"])
    rkey = stream.emit(event)
    await spindle.finished(knot, rkey, "quick")
    newer = git.commit({"NOTES": "a newer commit\n"})
    registered.knot.clear_requests()

    stream.emit(event, rkey=rkey)
    marker = stream.emit(push_event(knot, git, newer, workflows=["quick.yml"]))
    await spindle.recorded(knot, marker)

    assert [p.rkey for p in await spindle.pipelines()] == [rkey, marker]
    # Only the marker's commit was read from the knot: the redelivery stopped at the database.
    assert {r.query["ref"] for r in registered.knot.xrpc_requests()} == {newer}
    assert await spindle.count(WorkflowRun) == 2


async def test_events_for_an_unregistered_repo_or_from_the_wrong_knot_are_ignored(
    spindle: Spindle, registered: EventKnot
):
    knot, stream, git = registered.host, registered.stream, registered.repo
    stranger = registered.knot.create_repo("did:plc:strangeraaaaaaaaaaaaaaaa", "other")
    stranger_sha = stranger.commit({".github/workflows/ci.yml": "on: push\n"})
    # Another knot's name in the event: that knot, not this one, must vouch for its repos.
    with_other_knot = push_event("knot.elsewhere.example", git, registered.sha, workflows=["ci.yml"])
    unregistered_name = push_event(knot, git, registered.sha, workflows=["ci.yml"])
    unregistered_name["triggerMetadata"]["repo"]["repo"] = "not-hello"

    for event in (push_event(knot, stranger, stranger_sha), with_other_knot, unregistered_name):
        stream.emit(event)
    # Frames are handled in order: once the marker is recorded, the three before it were handled.
    marker = stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]))
    await spindle.recorded(knot, marker)

    assert [p.rkey for p in await spindle.pipelines()] == [marker]
    assert not any(r.query.get("repo", "").startswith(stranger.did) for r in registered.knot.requests)


async def test_an_event_naming_the_repos_own_did_matches_a_registration_by_that_did(
    spindle: Spindle, registered: EventKnot
):
    knot, git = registered.host, registered.repo
    # Newer knots: `did` is the owner's DID and `repoDid` the repo's own, which is what we registered.
    event = push_event(knot, git, registered.sha, workflows=["quick"])
    event["triggerMetadata"]["repo"].update(did="did:plc:theownerbbbbbbbbbbbbbbbb", repoDid=git.did)

    rkey = registered.stream.emit(event)

    pipeline = await spindle.recorded(knot, rkey)
    assert pipeline.repo_did == git.did
    assert (await spindle.finished(knot, rkey, "quick"))["status"] == "success"


async def test_names_without_a_github_file_are_skipped_and_said_so_in_the_log(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="app.knot")
    knot = registered.host
    event = push_event(
        knot,
        registered.repo,
        registered.sha,
        workflows=[".tangled/workflows/quick.yml", "release.yml", "lint.yaml", "quick.yaml"],
    )

    rkey = registered.stream.emit(event)

    pipeline = await spindle.recorded(knot, rkey)
    assert [run.name for run in pipeline.workflow_runs] == ["quick", "lint"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"pipeline {rkey}: skipped workflow release.yml: no .github/workflows/release" in m for m in messages
    )


async def test_an_event_whose_workflows_all_lack_a_github_file_records_nothing(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="app.knot")
    knot, stream = registered.host, registered.stream
    rkey = stream.emit(push_event(knot, registered.repo, registered.sha, workflows=["release.yml", "docs"]))
    marker = stream.emit(push_event(knot, registered.repo, registered.sha, workflows=["quick"]))

    await spindle.recorded(knot, marker)

    assert [p.rkey for p in await spindle.pipelines()] == [marker]
    assert any(
        f"pipeline {rkey} for" in r.getMessage() and "nothing recorded" in r.getMessage()
        for r in caplog.records
    )


async def test_restart_resumes_from_the_cursor_with_nothing_lost_or_run_twice(
    make_spindle: Callable[..., Any], event_knot: EventKnot
):
    knot, stream, git = event_knot.host, event_knot.stream, event_knot.repo
    first_commit = git.commit({"NOTES": "the first push\n"})
    async with make_spindle() as first:
        await first.register(knot, git)
        await first.connected(knot)
        before = stream.emit(push_event(knot, git, first_commit, workflows=["quick"]))
        await first.finished(knot, before, "quick")
        stored = await first.cursor(knot)
    assert stored == minted(before)

    while_down = [stream.emit(push_event(knot, git, event_knot.sha, workflows=["quick"])) for _ in range(5)]
    event_knot.knot.clear_requests()

    async with make_spindle() as second:
        for rkey in while_down:
            assert (await second.finished(knot, rkey, "quick"))["status"] == "success"
        replay = stream.connections[-1]
        assert replay.cursor == stored - knot_events.CURSOR_SAFETY_NS
        assert replay.sent[:6] == [before, *while_down]  # the margin replays `before` too
        assert [p.rkey for p in await second.pipelines()] == [before, *while_down]
        # A fresh process, an empty cache: the replayed event still stopped at the database.
        assert first_commit not in {r.query.get("ref") for r in event_knot.knot.xrpc_requests()}
        async with second.sessions() as session:
            starts = list(await session.scalars(select(StatusEvent).where(StatusEvent.status == "running")))
        assert len(starts) == 6  # one start per run: the replayed `before` ran no second time


async def test_restart_in_the_middle_of_a_replay_resumes_at_the_last_event_handled(
    make_spindle: Callable[..., Any], event_knot: EventKnot, monkeypatch: pytest.MonkeyPatch
):
    # No safety margin: the resume point alone must be exact.
    monkeypatch.setattr(knot_events, "CURSOR_SAFETY_NS", 0)
    knot, stream, git = event_knot.host, event_knot.stream, event_knot.repo
    async with make_spindle() as first:
        await first.register(knot, git)
        await first.connected(knot)
    missed = [stream.emit(push_event(knot, git, event_knot.sha, workflows=["quick"])) for _ in range(20)]
    # The knot sends the first 5 of them, then holds the stream: the restart lands mid-replay by
    # construction, however fast this machine handles events.
    gate = stream.pause_after(5)

    async with make_spindle() as second:
        await eventually(
            lambda: _replay_held(second, knot, gate, handled=5),
            what="the first 5 replayed events to be handled and the knot to hold the rest",
        )
        replay = stream.connections[-1]
        assert await second.cursor(knot) == minted(missed[4])
    handled = [p.rkey for p in await second.pipelines()]
    assert handled == missed[:5] == replay.sent
    assert 3 <= len(handled) < len(missed)
    gate.open()  # the second connection is gone; the next one gets the rest at once

    async with make_spindle() as third:
        await eventually(lambda: _at_least(third, len(missed)), what="the rest of the replay")
        resumed = stream.connections[-1]
        assert resumed is not replay
        assert [p.rkey for p in await third.pipelines()] == missed
        assert await third.count(WorkflowRun) == len(missed)  # none run twice
    # The resume point is the knot's own clock for the last event the second process handled: it was
    # idle at the gate when it stopped, with that event's cursor stored.
    assert resumed.cursor == minted(handled[-1])
    assert minted(handled[-2]) <= resumed.cursor < minted(missed[len(handled)])


async def _replay_held(spindle: Spindle, knot: str, gate: Gate, *, handled: int) -> bool:
    """The knot holds the replay and the consumer is done with the frames it got (`recorded` counts
    an event once it is handled, its cursor stored)."""
    link = spindle.link(knot)
    return gate.held == 1 and link is not None and link.recorded >= handled


async def _at_least(spindle: Spindle, n: int) -> bool:
    return len(await spindle.pipelines()) >= n


async def test_a_dropped_connection_is_reconnected_and_later_events_are_processed(
    spindle: Spindle, registered: EventKnot
):
    knot, stream, git = registered.host, registered.stream, registered.repo
    first = stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]))
    await spindle.recorded(knot, first)

    stream.drop()
    during_gap = stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]))
    await spindle.connected(knot, connects=2)
    after = stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]))

    await spindle.recorded(knot, after)
    assert [p.rkey for p in await spindle.pipelines()] == [first, during_gap, after]
    assert stream.connections[1].cursor == minted(first) - knot_events.CURSOR_SAFETY_NS


async def test_non_pipeline_events_are_ignored_but_move_the_cursor(spindle: Spindle, registered: EventKnot):
    knot, stream = registered.host, registered.stream
    ref_update = stream.emit({"ref": "refs/heads/main", "newSha": registered.sha}, nsid=REF_UPDATE)

    await eventually(lambda: _cursor_is(spindle, knot, minted(ref_update)), what="the cursor to move past it")
    assert await spindle.pipelines() == []


async def _cursor_is(spindle: Spindle, knot: str, value: int | None) -> bool:
    return await spindle.cursor(knot) == value


async def test_repo_add_and_remove_start_and_stop_the_subscription_without_a_restart(
    spindle: Spindle, event_knot: EventKnot, db_url: str
):
    knot, stream, git = event_knot.host, event_knot.stream, event_knot.repo
    assert stream.attempts == 0

    await _cli("repo", "add", "--knot", knot, "--repo-did", git.did, "--name", git.name, db_url=db_url)
    await spindle.connected(knot)
    added = stream.emit(push_event(knot, git, event_knot.sha, workflows=["quick"]))
    await spindle.recorded(knot, added)

    await _cli("repo", "remove", "--knot", knot, "--repo-did", git.did, "--name", git.name, db_url=db_url)
    await eventually(lambda: _unsubscribed(spindle, stream, knot), what="the subscription to stop")
    while_removed = stream.emit(push_event(knot, git, event_knot.sha, workflows=["quick"]))

    await _cli("repo", "add", "--knot", knot, "--repo-did", git.did, "--name", git.name, db_url=db_url)
    await spindle.connected(knot)
    assert stream.connections[-1].cursor is None  # afresh: nothing from the unregistered time
    again = stream.emit(push_event(knot, git, event_knot.sha, workflows=["quick"]))
    await spindle.recorded(knot, again)
    assert [p.rkey for p in await spindle.pipelines()] == [added, again]
    assert while_removed not in stream.connections[-1].sent


async def _unsubscribed(spindle: Spindle, stream: Any, knot: str) -> bool:
    return stream.open_connections == 0 and spindle.link(knot) is None and await spindle.cursor(knot) is None


async def _cli(*args: str, db_url: str) -> None:
    env = {**os.environ, "SPINDLE_DATABASE_URL": db_url, "SPINDLE_DEV": "true"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, (out + err).decode()


async def test_events_from_two_knots_are_followed_independently(
    spindle: Spindle, registered: EventKnot, tmp_path: Path
):
    with make_event_knot(tmp_path / "second-knot", did="did:plc:boboooooooooooooooooooooo") as second:
        await spindle.register(second.host, second.repo)
        await spindle.connected(second.host)
        one = registered.stream.emit(
            push_event(registered.host, registered.repo, registered.sha, workflows=["quick"])
        )
        two = second.stream.emit(push_event(second.host, second.repo, second.sha, workflows=["quick"]))

        assert (await spindle.recorded(registered.host, one)).repo_did == registered.repo.did
        assert (await spindle.recorded(second.host, two)).repo_did == second.repo.did
