"""Reading a knot's pipeline event: checks, workflow names, record-key clocks and the stream URL."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.knot.events import SkipEvent, cursor_mark, events_url, parse_pipeline_event, tid_time_ns
from app.streams.service import make_tid

KNOT = "knot.example.com"
SHA = "a" * 40
EVENT: dict[str, Any] = {
    "$type": "sh.tangled.pipeline",
    "triggerMetadata": {
        "kind": "push",
        "repo": {"knot": KNOT, "did": "did:plc:alice", "repo": "hello", "defaultBranch": "main"},
        "push": {"ref": "refs/heads/main", "newSha": SHA, "oldSha": "0" * 40},
        "unknownFutureField": {"ignored": True},
    },
    "workflows": [{"name": "ci.yml", "engine": "nixery", "clone": {"depth": 1}, "raw": "steps: []"}],
}


def event(**meta: Any) -> dict[str, Any]:
    changed = copy.deepcopy(EVENT)
    changed["triggerMetadata"].update(meta)
    return changed


def test_reads_a_push_event_and_keeps_only_the_known_trigger_fields():
    parsed = parse_pipeline_event(knot=KNOT, rkey="3kabc", event=EVENT)

    assert (parsed.kind, parsed.sha, parsed.repo_did, parsed.repo_name) == (
        "push",
        SHA,
        "did:plc:alice",
        "hello",
    )
    assert parsed.names == ("ci.yml",)
    assert parsed.trigger == {
        "kind": "push",
        "repo": {"knot": KNOT, "did": "did:plc:alice", "repo": "hello", "defaultBranch": "main"},
        "push": {"ref": "refs/heads/main", "newSha": SHA, "oldSha": "0" * 40},
    }


def test_a_newer_knot_names_the_repos_own_did_besides_the_owners():
    repo = {
        "knot": KNOT,
        "did": "did:plc:owner",
        "repo": "hello",
        "repoDid": "did:plc:repo",
        "defaultBranch": "main",
    }

    parsed = parse_pipeline_event(knot=KNOT, rkey="3kabc", event=event(repo=repo))
    same = parse_pipeline_event(
        knot=KNOT, rkey="3kabc", event=event(repo={**repo, "repoDid": "did:plc:owner"})
    )

    assert (parsed.repo_did, parsed.other_dids) == ("did:plc:owner", ("did:plc:repo",))
    assert same.other_dids == ()


def test_a_pull_request_runs_at_its_source_commit_lower_cased():
    pr = {"sourceBranch": "feature", "targetBranch": "main", "sourceSha": "B" * 40, "action": "create"}

    parsed = parse_pipeline_event(knot=KNOT, rkey="3kabc", event=event(kind="pull_request", pullRequest=pr))

    assert parsed.sha == "b" * 40


def test_a_manual_event_has_no_commit_and_carries_its_inputs():
    manual = {"inputs": [{"key": "target", "value": "prod"}, {"key": "dry_run", "value": "false"}]}

    parsed = parse_pipeline_event(knot=KNOT, rkey="3kabc", event=event(kind="manual", manual=manual))

    assert (parsed.sha, parsed.default_branch) == (None, "main")
    assert parsed.inputs == {"target": "prod", "dry_run": "false"}


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"kind": "tag"}, "triggerMetadata.kind"),
        (
            {"repo": {"knot": "evil.example", "did": "did:plc:alice", "repo": "hello"}},
            "names knot 'evil.example'",
        ),
        ({"push": {"ref": "refs/heads/main", "newSha": "main"}}, "without a full commit id ('main')"),
        ({"push": {"ref": "refs/heads/main", "newSha": "a" * 39}}, "without a full commit id"),
        ({"push": None}, "a push event without a full commit id (None)"),
        ({"kind": "pull_request"}, "a pull_request event without a full commit id"),
        (
            {"kind": "manual", "repo": {"knot": KNOT, "did": "d", "repo": "r"}},
            "must name the repo's defaultBranch",
        ),
        ({"kind": "manual", "manual": {"inputs": [{"key": "1bad", "value": ""}]}}, "manual.inputs.0.key"),
        (
            {"kind": "manual", "manual": {"inputs": [{"key": f"k{i}", "value": ""} for i in range(26)]}},
            "inputs",
        ),
        (
            {
                "kind": "manual",
                "manual": {"inputs": [{"key": f"k{i}", "value": "x" * 1000} for i in range(20)]},
            },
            "KiB",
        ),
    ],
)
def test_refuses_an_event_that_does_not_say_what_to_run(changed: dict[str, Any], reason: str):
    with pytest.raises(SkipEvent) as caught:
        parse_pipeline_event(knot=KNOT, rkey="3kabc", event=event(**changed))

    assert reason in str(caught.value)


@pytest.mark.parametrize("bad", ["a string", None, {}, {"triggerMetadata": {}}, {"workflows": []}])
def test_refuses_what_is_not_a_pipeline_record(bad: Any):
    with pytest.raises(SkipEvent, match="not an sh.tangled.pipeline record"):
        parse_pipeline_event(knot=KNOT, rkey="3kabc", event=bad)


def test_refuses_text_that_is_not_unicode_a_lone_surrogate_from_a_json_escape():
    repo = {"knot": KNOT, "did": "did:plc:alice", "repo": "hello\udfff", "defaultBranch": "main"}

    with pytest.raises(SkipEvent, match="triggerMetadata.repo.repo"):
        parse_pipeline_event(knot=KNOT, rkey="3kabc", event=event(repo=repo))


def test_refuses_an_event_that_names_no_workflow():
    empty = copy.deepcopy(EVENT)
    empty["workflows"] = []

    with pytest.raises(SkipEvent, match="names no workflow"):
        parse_pipeline_event(knot=KNOT, rkey="3kabc", event=empty)


def test_reads_the_time_a_tid_was_minted():
    micros = 1_722_000_000_123_456

    assert tid_time_ns(make_tid(micros, 0)) == micros * 1000
    assert tid_time_ns(make_tid(micros, 1023)) == micros * 1000
    assert tid_time_ns("3kabc") is None
    assert tid_time_ns("not-a-tid-at-all") is None


def test_the_cursor_is_the_knots_clock_from_a_tid_never_later_than_ours():
    now = 1_800_000_000 * 10**9
    earlier = make_tid((now - 5 * 10**9) // 1000, 7)
    future = make_tid((now + 3600 * 10**9) // 1000, 7)

    assert cursor_mark(earlier, now) == now - 5 * 10**9
    assert cursor_mark(future, now) == now
    assert cursor_mark("3kabc", now) == now


@pytest.mark.parametrize(
    ("dev", "cursor", "url"),
    [
        (False, None, "wss://knot.example.com/events"),
        (True, None, "ws://knot.example.com/events"),
        (False, 0, "wss://knot.example.com/events"),
        (False, 1722000000000000000, "wss://knot.example.com/events?cursor=1722000000000000000"),
    ],
)
def test_the_events_url_carries_the_cursor_only_when_there_is_one(dev: bool, cursor: int | None, url: str):
    assert events_url(KNOT, dev=dev, cursor=cursor) == url
