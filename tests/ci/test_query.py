"""sh.tangled.ci.queryPipelines and getPipeline: every way a run starts, read back per the lexicons."""

from __future__ import annotations

import pytest

from app.ci import schemas
from app.runs.tid import is_tid
from tests.ci.conftest import Served, valid_output
from tests.runs.conftest import Identity

PUSH = {"push": {"ref": "refs/heads/main", "newSha": "", "oldSha": "1" * 40}}


async def test_runs_of_our_trigger_a_knot_event_and_triggerpipeline_are_listed_newest_first(
    served: Served, bob: Identity
):
    await served.ours("3lours0000001")
    await served.dispatch("3lknot0000001", "push", push={**PUSH["push"], "newSha": served.sha})
    triggered = (await served.trigger(bob, ref="main", inputs=[{"key": "level", "value": "3"}])).json()

    answer = valid_output(
        schemas.QUERY_NSID, (await served.query(schemas.QUERY_NSID, {"repo": served.did})).json()
    )

    assert answer["total"] == 3 and "cursor" not in answer
    newest, knot, ours = answer["pipelines"]
    assert (
        all(is_tid(p["id"]) for p in answer["pipelines"]) and len({p["id"] for p in answer["pipelines"]}) == 3
    )
    assert triggered["pipeline"].endswith(f"/sh.tangled.pipeline/{newest['id']}")
    assert newest["trigger"] == {
        "$type": "sh.tangled.ci.trigger#manual",
        "sha": served.sha,
        "ref": "main",
        "inputs": [{"key": "level", "value": "3"}],
    }
    assert knot["trigger"] == {
        "$type": "sh.tangled.ci.trigger#push",
        "ref": "refs/heads/main",
        "newSha": served.sha,
        "oldSha": "1" * 40,
    }
    assert ours["trigger"] == {"$type": "sh.tangled.ci.trigger#manual", "sha": served.sha}
    assert {p["repo"] for p in answer["pipelines"]} == {served.did}
    assert {p["commit"] for p in answer["pipelines"]} == {served.sha}
    assert sorted(w["name"] for w in ours["workflows"]) == ["ci", "lint"]
    assert [w["name"] for w in knot["workflows"]] == ["ci"]
    assert all(w["id"] == w["name"] and w["status"] in schemas_statuses() for w in ours["workflows"])


def schemas_statuses() -> set[str]:
    return {"pending", "running", "failed", "timeout", "cancelled", "success"}


async def test_kinds_and_commits_filter_and_a_commit_gives_at_most_its_newest_pipeline(
    served: Served, bob: Identity
):
    await served.ours("3lours0000001")
    await served.dispatch("3lknot0000001", "push", push={**PUSH["push"], "newSha": served.sha})
    other = served.git.commit({"README.md": "another commit\n"})
    later = (await served.trigger(bob, sha=other)).json()

    pushes = (await served.query(schemas.QUERY_NSID, {"repo": served.did, "kinds": "push"})).json()
    manual = (
        await served.query(
            schemas.QUERY_NSID, [("repo", served.did), ("kinds", "manual"), ("kinds", "pull_request")]
        )
    ).json()
    by_commit = (
        await served.query(
            schemas.QUERY_NSID, [("repo", served.did), ("commits", served.sha), ("commits", other)]
        )
    ).json()

    assert [p["trigger"]["$type"] for p in valid_output(schemas.QUERY_NSID, pushes)["pipelines"]] == [
        "sh.tangled.ci.trigger#push"
    ]
    assert manual["total"] == 2 and {p["commit"] for p in manual["pipelines"]} == {served.sha, other}
    assert by_commit["total"] == 2
    newest_per_commit = {p["commit"]: p for p in valid_output(schemas.QUERY_NSID, by_commit)["pipelines"]}
    assert newest_per_commit[other]["id"] == later["pipeline"].rsplit("/", 1)[1]
    assert newest_per_commit[served.sha]["trigger"]["$type"] == "sh.tangled.ci.trigger#push"


async def test_pages_follow_the_cursor_to_the_end_without_repeats(served: Served):
    for n in range(5):
        assert (await served.ours(f"3lpage{n:07d}")).status_code == 200
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"repo": served.did, "limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = valid_output(schemas.QUERY_NSID, (await served.query(schemas.QUERY_NSID, params)).json())
        assert page["total"] == 5
        seen += [p["id"] for p in page["pipelines"]]
        cursor = page.get("cursor")
        if cursor is None:
            break
    assert len(seen) == 5 and len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)  # our TIDs increase as pipelines are made


async def test_another_repos_pipelines_are_not_listed(served: Served):
    await served.ours("3lours0000001")
    answer = (await served.query(schemas.QUERY_NSID, {"repo": "did:plc:nobodyhereatallxxxxxxxxx"})).json()
    assert valid_output(schemas.QUERY_NSID, answer) == {"total": 0, "pipelines": []}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "repo"),
        ({"repo": "not-a-did"}, "repo"),
        ({"limit": "0"}, "limit"),
        ({"limit": "251"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"kinds": "tag"}, "kinds"),
        ({"commits": "main"}, "commits"),
        ({"cursor": "3l5zzzz"}, "cursor"),
    ],
)
async def test_refuses_malformed_parameters_naming_them(served: Served, params, field):
    query = {"repo": served.did, **params} if "repo" not in params and params else params
    response = await served.query(schemas.QUERY_NSID, query)
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest" and response.json()["message"].startswith(field)


async def test_get_pipeline_answers_one_pipeline_per_the_lexicon(served: Served, bob: Identity):
    triggered = (await served.trigger(bob, workflows=["lint.yaml"])).json()
    tid = triggered["pipeline"].rsplit("/", 1)[1]
    response = await served.query(schemas.GET_NSID, {"pipeline": tid})
    pipeline = valid_output(schemas.GET_NSID, response.json())
    assert pipeline["id"] == tid and [w["name"] for w in pipeline["workflows"]] == ["lint"]


async def test_get_pipeline_of_an_unknown_id_is_pipeline_not_found(served: Served):
    response = await served.query(schemas.GET_NSID, {"pipeline": "3lzzzzzzzzzzz"})
    assert response.status_code == 404
    assert response.json()["error"] == "PipelineNotFound" and "3lzzzzzzzzzzz" in response.json()["message"]


@pytest.mark.parametrize("value", ["", "not-a-tid", "3cpending", "at://did:web:knot/sh.tangled.pipeline/3l"])
async def test_get_pipeline_refuses_an_id_that_is_not_a_tid(served: Served, value):
    response = await served.query(schemas.GET_NSID, {"pipeline": value})
    assert response.status_code == 400 and response.json()["message"].startswith("pipeline")
