"""Knot events under hostile input and faults: bad frames, floods, knots that refuse, hang or fail."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.knot import events as knot_events
from app.runs.models import Pipeline
from tests.events.conftest import EventKnot, Spindle, eventually, minted
from tests.support.knot import TREE
from tests.support.knot_events import PIPELINE, BlackHoleKnot, manual_event, push_event


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """These tests are about the stream, not the database: SQLite only."""
    return sqlite_url


def _bad_pipeline_events(ek: EventKnot) -> list[object]:
    knot, git, sha = ek.host, ek.repo, ek.sha

    def with_meta(**changes: object) -> dict[str, object]:
        event = push_event(knot, git, sha)
        event["triggerMetadata"].update(changes)  # type: ignore[union-attr]
        return event

    branch_not_commit = push_event(knot, git, "main")
    bad_input = manual_event(knot, git, inputs={"not a name!": "x"})
    long_did = push_event(knot, git, sha)
    long_did["triggerMetadata"]["repo"]["did"] = "did:plc:" + "a" * 5000
    no_workflows = push_event(knot, git, sha, workflows=[])
    workflows_not_list = push_event(knot, git, sha)
    workflows_not_list["workflows"] = "ci.yml"
    return [
        "a string",
        {},
        with_meta(kind="tag"),
        with_meta(push=None),
        with_meta(push={"ref": "refs/heads/main"}),
        branch_not_commit,
        bad_input,
        long_did,
        no_workflows,
        workflows_not_list,
    ]


async def test_malformed_frames_are_logged_and_skipped_and_the_stream_goes_on(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="app.knot")
    stream = registered.stream
    for frame in (
        "not json at all",
        "[1, 2, 3]",
        "null",
        json.dumps({"nsid": PIPELINE, "event": {}}),
        json.dumps({"rkey": "..", "nsid": PIPELINE, "event": {}}),
        json.dumps({"rkey": "no spaces allowed", "nsid": PIPELINE, "event": {}}),
        json.dumps({"rkey": 12, "nsid": PIPELINE, "event": {}}),
        "[" * 100_000,
    ):
        stream.emit_frame(frame)
    for event in _bad_pipeline_events(registered):
        stream.emit(event)  # type: ignore[arg-type]
    marker = stream.emit(push_event(registered.host, registered.repo, registered.sha, workflows=["quick"]))

    await spindle.recorded(registered.host, marker)

    assert [p.rkey for p in await spindle.pipelines()] == [marker]
    link = spindle.link(registered.host)
    assert link is not None and link.connects == 1  # no bad frame cost the connection
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipped a frame that is not JSON" in messages
    assert "skipped a frame without a valid rkey" in messages
    assert "not an sh.tangled.pipeline record: triggerMetadata.kind" in messages
    assert "a push event without a full commit id ('main')" in messages
    assert "it names no workflow" in messages


async def test_a_frame_over_a_mebibyte_is_refused_and_the_connection_kept(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="app.knot")
    big = push_event(registered.host, registered.repo, registered.sha, workflows=["quick"])
    big["padding"] = "x" * (knot_events.MAX_FRAME_BYTES + 10)
    refused = registered.stream.emit(big)
    marker = registered.stream.emit(
        push_event(registered.host, registered.repo, registered.sha, workflows=["quick"])
    )

    await spindle.recorded(registered.host, marker)

    assert refused not in [p.rkey for p in await spindle.pipelines()]
    assert spindle.link(registered.host).connects == 1  # type: ignore[union-attr]
    assert any("refused a frame of" in r.getMessage() for r in caplog.records)


async def test_a_frame_too_big_to_read_ends_the_connection_and_is_skipped_past(
    spindle: Spindle, registered: EventKnot
):
    knot, stream = registered.host, registered.stream
    stream.emit_frame("x" * (knot_events.MAX_WIRE_BYTES + 1))

    # Refused at the protocol (1009); the next connection must not be fed it again forever.
    link = await spindle.connected(knot, connects=2)
    after = stream.emit(push_event(knot, registered.repo, registered.sha, workflows=["quick"]))

    await spindle.recorded(knot, after)
    assert link.connects == 2
    assert stream.connections[1].sent == [after]


async def test_a_flood_of_events_is_recorded_once_each(
    make_spindle: Callable[..., Any], event_knot: EventKnot, capsys: pytest.CaptureFixture[str]
):
    # The consumer's throughput, not the repo's quotas (docs/limits.md): those are off here.
    async with make_spindle(repo_runs_per_minute=0, max_queued_runs_per_repo=0) as spindle:
        await spindle.register(event_knot.host, event_knot.repo)
        await spindle.connected(event_knot.host)
        await _flood(spindle, event_knot, capsys)


async def _flood(spindle: Spindle, registered: EventKnot, capsys: pytest.CaptureFixture[str]) -> None:
    knot, stream, git = registered.host, registered.stream, registered.repo
    started = time.monotonic()
    event = push_event(knot, git, registered.sha, workflows=["quick"])
    rkeys = [stream.emit(event) for _ in range(500)]
    for rkey in rkeys[:50]:
        stream.emit(event, rkey=rkey)  # redeliveries mixed in

    async def all_recorded() -> bool:
        return len(await spindle.pipelines()) >= len(rkeys)

    await eventually(all_recorded, what="500 events to be recorded", timeout=300)
    elapsed = time.monotonic() - started
    await eventually(
        lambda: _cursor_is(spindle, knot, minted(rkeys[49])), what="the redeliveries to be handled"
    )

    assert sorted(p.rkey for p in await spindle.pipelines()) == sorted(rkeys)
    with capsys.disabled():
        print(f"\n  500 knot events (+50 redelivered) recorded in {elapsed:.1f} s")
    # The service kept answering while it worked through them.
    assert (await spindle.client.get("/healthz")).status_code == 200


async def _cursor_is(spindle: Spindle, knot: str, value: int | None) -> bool:
    return await spindle.cursor(knot) == value


async def test_a_knot_that_never_answers_blocks_neither_other_knots_nor_the_api(
    spindle: Spindle, event_knot: EventKnot
):
    with BlackHoleKnot() as dead:
        await spindle.register(dead.host, event_knot.repo)
        await spindle.register(event_knot.host, event_knot.repo)
        await spindle.connected(event_knot.host)

        rkey = event_knot.stream.emit(
            push_event(event_knot.host, event_knot.repo, event_knot.sha, workflows=["quick"])
        )
        await spindle.recorded(event_knot.host, rkey)
        assert (await spindle.client.get("/healthz")).status_code == 200

        silent = f"the knot did not answer the /events handshake within {spindle.settings.knot_timeout:g} s"

        async def gave_up() -> bool:
            link = spindle.link(dead.host)
            return bool(link and link.last_error == silent)

        await eventually(gave_up, what="the silent knot's handshake to time out")
        assert not spindle.link(dead.host).connected  # type: ignore[union-attr]


async def test_a_refused_or_hung_handshake_is_retried_until_the_knot_accepts(
    spindle: Spindle, event_knot: EventKnot
):
    stream = event_knot.stream
    stream.refuse = True
    await spindle.register(event_knot.host, event_knot.repo)
    await eventually(_attempts(stream, 3), what="three refused handshakes")
    stream.refuse, stream.hang = False, True
    tried = stream.attempts
    await eventually(_attempts(stream, tried + 2), what="a hung handshake to be given up and retried")
    stream.hang = False

    await spindle.connected(event_knot.host)
    rkey = stream.emit(push_event(event_knot.host, event_knot.repo, event_knot.sha, workflows=["quick"]))
    await spindle.recorded(event_knot.host, rkey)


def _attempts(stream: object, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return stream.attempts >= n  # type: ignore[attr-defined,no-any-return]

    return check


async def test_a_knot_failing_to_serve_the_files_is_retried_then_the_event_skipped(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="app.knot")
    knot, stream, git = registered.host, registered.stream, registered.repo
    registered.knot.fail(500, nsid=TREE)
    failing = stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]))

    await eventually(lambda: _cursor_is(spindle, knot, minted(failing)), what="the event to be given up")
    registered.knot.reset()
    newer = git.commit({"NOTES": "later\n"})
    marker = stream.emit(push_event(knot, git, newer, workflows=["quick"]))
    await spindle.recorded(knot, marker)

    assert [p.rkey for p in await spindle.pipelines()] == [marker]
    tries = [r for r in registered.knot.xrpc_requests(TREE) if r.query["ref"] == registered.sha]
    assert len(tries) == knot_events.UPSTREAM_ATTEMPTS
    assert any(
        f"skipped pipeline {failing}: the knot failed 3 times" in r.getMessage() for r in caplog.records
    )


async def test_events_the_knot_cannot_back_are_skipped_without_retries(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="app.knot")
    knot, stream, git = registered.host, registered.stream, registered.repo
    unknown_commit = stream.emit(push_event(knot, git, "f" * 40))
    no_such_branch = stream.emit(manual_event(knot, git, inputs={}, default_branch="gone"))
    marker = stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]))

    await spindle.recorded(knot, marker)

    assert [p.rkey for p in await spindle.pipelines()] == [marker]
    assert len([r for r in registered.knot.xrpc_requests(TREE) if r.query["ref"] == "f" * 40]) == 1
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"skipped pipeline {unknown_commit}: knot {knot} does not have commit {'f' * 40}" in messages
    assert f"skipped pipeline {no_such_branch}: knot {knot} has no branch 'gone'" in messages


async def test_the_api_answers_while_a_knot_keeps_an_event_waiting(spindle: Spindle, registered: EventKnot):
    knot = registered.host
    registered.knot.hang(nsid=TREE)
    registered.stream.emit(push_event(knot, registered.repo, registered.sha, workflows=["quick"]))
    await eventually(_tree_asked(registered), what="the consumer to ask the knot")

    response = await asyncio.wait_for(spindle.client.get("/healthz"), 30)

    assert response.status_code == 200
    assert await spindle.pipelines() == []
    registered.knot.reset()


def _tree_asked(ek: EventKnot):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(ek.knot.xrpc_requests(TREE))

    return check


async def test_an_rkey_a_manual_trigger_already_took_is_not_run_again_for_another_repo(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="app.knot")
    knot, stream, git = registered.host, registered.stream, registered.repo
    taken = stream.new_rkey()
    async with spindle.sessions() as session:
        session.add(
            Pipeline(
                knot=knot,
                rkey=taken,
                repo_did="did:plc:someoneelseaaaaaaaaaaaaa",
                repo_name="elsewhere",
                sha="e" * 40,
                actor="did:plc:someoneelseaaaaaaaaaaaaa",
                trigger_kind="manual",
                trigger={"inputs": {}},
                request_digest="0" * 64,
            )
        )
        await session.commit()

    stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]), rkey=taken)
    marker = stream.emit(push_event(knot, git, registered.sha, workflows=["quick"]))
    await spindle.recorded(knot, marker)

    assert [(p.rkey, p.repo_name) for p in await spindle.pipelines()] == [
        (taken, "elsewhere"),
        (marker, "hello"),
    ]
    assert any(f"rkey {taken} already names another pipeline" in r.getMessage() for r in caplog.records)
