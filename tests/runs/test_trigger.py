"""The trigger procedure end to end: real HTTP, real tokens, a real git knot, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app.runs.models import Pipeline, Status, WorkflowRun
from app.runs.schemas import TRIGGER_NSID
from app.xrpc.lexicon import lexicons
from tests.runs.conftest import CI_YML, LINT_YAML, Identity, KnotRepo, Spindle, new_identity
from tests.support.knot import TREE, TestKnot

validate_output = lexicons().output_validator(TRIGGER_NSID)


@pytest.mark.parametrize("alg", ["ES256K", "ES256"])
async def test_triggers_a_workflow_and_answers_with_stream_urls(spindle: Spindle, knot, plc, alg: str):
    owner = new_identity(plc, alg)
    git = knot.create_repo(owner.did, "curvy")
    sha = git.commit({".github/workflows/ci.yml": CI_YML})
    await spindle.register(knot=knot.host, did=owner.did, name="curvy")
    body = {
        "knot": knot.host,
        "pipelineRkey": "3kabc",
        "actor": owner.did,
        "repoDid": owner.did,
        "repoName": "curvy",
        "ref": sha,
    }

    response = await spindle.trigger(body, by=owner)

    assert response.status_code == 200, response.text
    validate_output(response.json())
    base = spindle.settings.base_url
    assert response.json() == {
        "submitted": True,
        "knot": knot.host,
        "pipelineRkey": "3kabc",
        "ref": sha,
        "workflows": [
            {
                "workflow": "ci",
                "logsUrl": f"ws://{base.removeprefix('http://')}/logs/{knot.host}/3kabc/ci",
                "statusUrl": f"{base}/status/{knot.host}/3kabc/ci",
            }
        ],
    }


async def test_records_pipeline_runs_and_pending_events_before_answering(spindle: Spindle, repo: KnotRepo):
    body = repo.body()

    response = await spindle.trigger(body, by=repo.owner)

    assert response.status_code == 200, response.text
    assert [w["workflow"] for w in response.json()["workflows"]] == ["ci", "lint"]
    [pipeline] = await spindle.pipelines()
    assert (pipeline.knot, pipeline.rkey, pipeline.sha) == (repo.knot.host, body["pipelineRkey"], repo.sha)
    assert (pipeline.repo_did, pipeline.repo_name, pipeline.actor) == (repo.git.did, "hello", repo.owner.did)
    assert pipeline.trigger_kind == "manual"
    runs = pipeline.workflow_runs
    assert [(r.name, r.path) for r in runs] == [
        ("ci", ".github/workflows/ci.yml"),
        ("lint", ".github/workflows/lint.yaml"),
    ]
    assert runs[0].source == CI_YML
    events = await spindle.events()
    assert [(e.workflow_run_id, e.status) for e in events[:2]] == [
        (runs[0].id, Status.PENDING),
        (runs[1].id, Status.PENDING),
    ]
    assert spindle.wakes.count == 1


async def test_a_retry_returns_the_stored_answer_and_starts_nothing(spindle: Spindle, repo: KnotRepo):
    body = repo.body()
    first = await spindle.trigger(body, by=repo.owner)
    xrpc_after_first = len(repo.knot.xrpc_requests())

    again = await spindle.trigger(body, by=repo.owner)

    assert again.status_code == 200
    assert again.json() == first.json()
    assert len(repo.knot.xrpc_requests()) == xrpc_after_first
    assert await spindle.count(Pipeline) == 1
    assert await spindle.count(WorkflowRun) == 2
    # The engine moves the runs on (running, success...); no second `pending` was recorded.
    assert [e.status for e in await spindle.events()].count(Status.PENDING) == 2
    assert spindle.wakes.count == 1


async def test_the_same_rkey_with_different_content_is_invalid(spindle: Spindle, repo: KnotRepo):
    body = repo.body()
    await spindle.trigger(body, by=repo.owner)

    response = await spindle.trigger({**body, "inputs": {"extra": "1"}}, by=repo.owner)

    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
    assert "pipelineRkey" in response.json()["message"]
    assert await spindle.count(Pipeline) == 1


async def test_concurrent_duplicate_triggers_record_one_pipeline(
    make_spindle: Callable[..., Any], knot: TestKnot, alice: Identity
):
    # A knot timeout no slow machine comes near: the knot holds the first answers until the last.
    async with make_spindle(knot_timeout=120.0) as spindle:
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": CI_YML, ".github/workflows/lint.yaml": LINT_YAML})
        await spindle.register(knot=knot.host, did=alice.did, name="hello")
        repo = KnotRepo(knot, git, sha, alice)
        body = repo.body()
        # Every request reaches the knot before any records: the knot answers none of them until all
        # six have asked for the file listing.
        gathering = knot.gather(6, nsid=TREE)

        responses = await asyncio.gather(*(spindle.trigger(body, by=repo.owner) for _ in range(6)))

        assert not gathering.broken, "the six requests did not all reach the knot"
        assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
        assert all(r.json() == responses[0].json() for r in responses)
        assert await spindle.count(Pipeline) == 1
        assert await spindle.count(WorkflowRun) == 2
        pending = [e for e in await spindle.events() if e.status is Status.PENDING]
        assert len(pending) == 2
        assert spindle.wakes.count == 1


async def test_a_collaborator_may_trigger(spindle: Spindle, knot, alice: Identity, bob: Identity):
    git = knot.create_repo(alice.did, "shared")
    sha = git.commit({".github/workflows/ci.yml": CI_YML})
    await spindle.register(knot=knot.host, did=alice.did, name="shared", collaborators=[bob.did])
    body = {
        "knot": knot.host,
        "pipelineRkey": "collab1",
        "actor": bob.did,
        "repoDid": alice.did,
        "repoName": "shared",
        "ref": sha,
    }

    response = await spindle.trigger(body, by=bob)

    assert response.status_code == 200, response.text


async def test_the_spindle_owner_may_trigger_any_registered_repo(make_spindle, knot, alice: Identity, plc):
    owner = new_identity(plc)
    async with make_spindle(owner=owner.did) as spindle:
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        await spindle.register(knot=knot.host, did=alice.did, name="hello")
        body = {
            "knot": knot.host,
            "pipelineRkey": "byowner",
            "actor": owner.did,
            "repoDid": alice.did,
            "repoName": "hello",
            "ref": sha,
        }

        response = await spindle.trigger(body, by=owner)

    assert response.status_code == 200, response.text


async def test_a_64_hex_sha256_commit_id_is_a_valid_ref(spindle: Spindle, knot, alice: Identity):
    git = knot.create_repo(alice.did, "modern", object_format="sha256")
    sha = git.commit({".github/workflows/ci.yml": CI_YML})
    await spindle.register(knot=knot.host, did=alice.did, name="modern")
    body = {
        "knot": knot.host,
        "pipelineRkey": "sha256",
        "actor": alice.did,
        "repoDid": alice.did,
        "repoName": "modern",
        "ref": sha.upper(),
    }

    response = await spindle.trigger(body, by=alice)

    assert response.status_code == 200, response.text
    assert response.json()["ref"] == sha
