"""sh.tangled.ci.triggerPipeline: the rights Tangled's spindle checks, recorded before the answer."""

from __future__ import annotations

from typing import Any

import pytest

from app.ci import schemas
from app.runs.schemas import TRIGGER_NSID as OUR_TRIGGER
from app.runs.tid import is_tid
from tests.ci.conftest import Served, valid_output
from tests.runs.conftest import Identity


async def test_a_collaborator_triggers_a_run_that_our_status_urls_show(served: Served, bob: Identity):
    response = await served.trigger(bob, ref="refs/heads/main", inputs=[{"key": "level", "value": "3"}])

    assert response.status_code == 200, response.text
    uri = valid_output(schemas.TRIGGER_NSID, response.json())["pipeline"]
    knot = served.knot.host.replace(":", "%3A")
    assert uri.startswith(f"at://did:web:{knot}/sh.tangled.pipeline/")
    tid = uri.rsplit("/", 1)[1]
    assert is_tid(tid)
    # Recorded before the answer, under its TID as record key: our own stream URLs find it.
    status = await served.spindle.client.get(f"/status/{served.knot.host}/{tid}")
    assert status.status_code == 200
    assert sorted(w["workflow"] for w in status.json()["workflows"]) == ["ci", "lint"]
    (pipeline,) = await served.spindle.pipelines()
    assert (pipeline.tid, pipeline.rkey, pipeline.trigger_kind, pipeline.actor) == (
        tid,
        tid,
        "manual",
        bob.did,
    )
    assert pipeline.trigger["manual"]["inputs"] == [{"key": "level", "value": "3"}]
    assert pipeline.trigger["ref"] == "refs/heads/main"


async def test_the_owner_and_the_spindle_owner_may_trigger(
    served: Served, alice: Identity, spindle_owner: Identity
):
    for who in (alice, spindle_owner):
        response = await served.trigger(who)
        assert response.status_code == 200, response.text
    assert len(await served.spindle.pipelines()) == 2


async def test_a_stranger_is_forbidden_and_nothing_is_recorded(served: Served, carol: Identity):
    response = await served.trigger(carol)
    assert response.status_code == 403 and response.json()["error"] == "Forbidden"
    assert carol.did in response.json()["message"]
    assert await served.spindle.pipelines() == []


async def test_a_repo_this_spindle_does_not_serve_is_forbidden(served: Served, alice: Identity):
    body = {"repo": alice.did, "trigger": {"$type": schemas.MANUAL, "sha": served.sha}}
    response = await served.call(schemas.TRIGGER_NSID, alice, body=body)
    assert response.status_code == 403 and "not served" in response.json()["message"]


async def test_needs_a_token_for_this_method(served: Served, alice: Identity):
    body = {"repo": served.did, "trigger": {"$type": schemas.MANUAL, "sha": served.sha}}
    anonymous = await served.call(schemas.TRIGGER_NSID, None, body=body)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = await served.call(schemas.TRIGGER_NSID, alice, body=body, lxm=OUR_TRIGGER)
    assert wrong.status_code == 401 and wrong.json()["error"] == "BadJwtLexiconMethod"
    assert await served.spindle.pipelines() == []


async def test_a_pull_request_trigger_runs_the_named_workflows_as_a_pull_request(
    served: Served, bob: Identity
):
    body = {
        "repo": served.did,
        "workflows": ["lint.yaml"],
        "trigger": {
            "$type": schemas.PULL_REQUEST,
            "sourceSha": served.sha,
            "sourceBranch": "feature",
            "targetBranch": "main",
            "action": "opened",
        },
    }
    response = await served.call(schemas.TRIGGER_NSID, bob, body=body)
    assert response.status_code == 200, response.text
    tid = response.json()["pipeline"].rsplit("/", 1)[1]
    pipeline = valid_output(
        schemas.GET_NSID, (await served.query(schemas.GET_NSID, {"pipeline": tid})).json()
    )
    assert [w["name"] for w in pipeline["workflows"]] == ["lint"]
    assert pipeline["trigger"] == {
        "$type": schemas.PULL_REQUEST,
        "targetBranch": "main",
        "sourceSha": served.sha,
        "sourceBranch": "feature",
        "action": "opened",
    }


def manual(**fields: Any) -> dict[str, Any]:
    return {"$type": schemas.MANUAL, **fields}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"repo": "not-a-did"}, "repo"),
        ({"trigger": manual(sha="abc")}, "trigger.sha"),
        ({"trigger": manual(sha="z" * 40)}, "trigger.sha"),
        (
            {"trigger": {"$type": "sh.tangled.ci.trigger#push", "ref": "r", "newSha": "a" * 40}},
            "trigger.$type",
        ),
        (
            {"trigger": manual(inputs=[{"key": "a", "value": "1"}, {"key": "a", "value": "2"}])},
            "trigger.inputs",
        ),
        ({"trigger": manual(inputs=[{"key": "no spaces", "value": "1"}])}, "trigger.inputs"),
        ({"trigger": manual(sourceRepo="did:plc:someforkelsewherexxxxxxx")}, "trigger.sourceRepo"),
        ({"workflows": ["deploy"]}, "workflows"),
        ({"workflows": "ci"}, "workflows"),
    ],
)
async def test_refuses_a_malformed_request_naming_the_field(served: Served, alice: Identity, change, field):
    body = {"repo": served.did, "trigger": manual(sha=served.sha), **change}
    if "$type" in body["trigger"] and body["trigger"]["$type"] == schemas.MANUAL:
        body["trigger"].setdefault("sha", served.sha)
    response = await served.call(schemas.TRIGGER_NSID, alice, body=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "InvalidRequest" and response.json()["message"].startswith(field)
    assert await served.spindle.pipelines() == []


async def test_a_commit_the_knot_does_not_have_is_a_clear_400(served: Served, alice: Identity):
    response = await served.trigger(alice, sha="b" * 40)
    assert response.status_code == 400 and response.json()["error"] == "InvalidRequest"
    assert await served.spindle.pipelines() == []
