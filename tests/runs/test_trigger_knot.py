"""The trigger and the knot: workflow files at the commit, knot failures, YAML and inputs."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.runs.models import Pipeline, StatusEvent
from tests.runs.conftest import CI_YML, Identity, KnotRepo, Spindle
from tests.support.knot import BLOB, TREE, TestKnot
from tests.support.servers import free_port

MakeRepo = Callable[..., Awaitable[KnotRepo]]


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Knot behaviour does not depend on the database; idempotency runs on both in test_trigger.py."""
    return sqlite_url


@pytest.fixture
def make_repo(spindle: Spindle, knot: TestKnot, alice: Identity) -> MakeRepo:
    """A registered repo of alice's on `knot` (or another knot) with these files at its commit."""

    async def make(files: dict[str, str | bytes], *, on: TestKnot | None = None) -> KnotRepo:
        where = on or knot
        name = "r" + secrets.token_hex(4)
        git = where.create_repo(alice.did, name)
        sha = git.commit(files)
        await spindle.register(knot=where.host, did=alice.did, name=name)
        return KnotRepo(where, git, sha, alice)

    return make


def workflow(on: str = "push", *, extra: str = "") -> str:
    return f"on: {on}\n{extra}jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n"


DISPATCH = """\
on:
  workflow_dispatch:
    inputs:
      target:
        description: where to deploy
        required: true
        type: choice
        options: [staging, production]
      dry_run:
        type: boolean
        default: true
      replicas:
        type: number
        default: 3
      note:
        type: string
jobs:
  deploy:
    runs-on: ubuntu-latest
    steps:
      - run: echo deploying
"""


async def expect_error(
    spindle: Spindle, repo: KnotRepo, status: int, error: str, fragment: str, **overrides: Any
) -> None:
    response = await spindle.trigger(repo.body(**overrides), by=repo.owner)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert fragment in response.json()["message"]
    assert await spindle.count(Pipeline) == 0


async def test_a_commit_the_knot_does_not_have_is_invalid(spindle: Spindle, make_repo: MakeRepo):
    repo = await make_repo({".github/workflows/ci.yml": CI_YML})

    await expect_error(spindle, repo, 400, "InvalidRequest", "does not have commit", ref="0" * 40)


async def test_a_commit_without_workflow_files_is_invalid(spindle: Spindle, make_repo: MakeRepo):
    repo = await make_repo({"README.md": "no CI here\n"})

    await expect_error(spindle, repo, 400, "InvalidRequest", "no workflow files")


async def test_only_yml_and_yaml_files_directly_in_the_workflows_directory_count(
    spindle: Spindle, make_repo: MakeRepo
):
    repo = await make_repo(
        {
            ".github/workflows/ci.yml": CI_YML,
            ".github/workflows/notes.md": "not a workflow\n",
            ".github/workflows/nested/deep.yml": CI_YML,
            ".github/workflows/ci.yml.disabled": CI_YML,
            "ci.yml": CI_YML,
        }
    )
    repo.git.symlink(".github/workflows/alias.yml", "ci.yml")
    sha = repo.git.commit(message="add a symlink")

    response = await spindle.trigger(repo.body(ref=sha), by=repo.owner)

    assert response.status_code == 200, response.text
    assert [w["workflow"] for w in response.json()["workflows"]] == ["ci"]


async def test_an_unreachable_knot_is_upstream_failure_and_records_nothing(spindle: Spindle, alice: Identity):
    dead = f"127.0.0.1:{free_port()}"
    await spindle.register(knot=dead, did=alice.did, name="gone")
    body = {
        "knot": dead,
        "pipelineRkey": "dead1",
        "actor": alice.did,
        "repoDid": alice.did,
        "repoName": "gone",
        "ref": "a" * 40,
    }

    response = await spindle.trigger(body, by=alice)

    assert response.status_code == 502
    assert response.json()["error"] == "UpstreamFailure"
    assert dead in response.json()["message"]
    assert await spindle.count(Pipeline) == 0
    assert await spindle.count(StatusEvent) == 0


async def test_a_knot_that_hangs_is_upstream_failure_after_the_knot_timeout(
    make_spindle, knot: TestKnot, alice: Identity
):
    async with make_spindle(knot_timeout=0.5) as spindle:
        git = knot.create_repo(alice.did, "slow")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        await spindle.register(knot=knot.host, did=alice.did, name="slow")
        knot.hang(nsid=BLOB)
        repo = KnotRepo(knot, git, sha, alice)

        await expect_error(spindle, repo, 502, "UpstreamFailure", "did not answer")


@pytest.mark.parametrize(
    ("breakage", "fragment"),
    [
        ("garbage", "not JSON"),
        ("500", "HTTP 500"),
        ("503-html", "HTTP 503"),
        ("no-files", "without a list of files"),
        ("bad-base64", "invalid base64"),
        ("redirect", "HTTP 302"),
    ],
)
async def test_a_knot_answering_nonsense_is_upstream_failure(
    spindle: Spindle, make_repo: MakeRepo, knot: TestKnot, breakage: str, fragment: str
):
    repo = await make_repo({".github/workflows/ci.yml": CI_YML})
    if breakage == "garbage":
        knot.answer_garbage(nsid=BLOB)
    elif breakage == "500":
        knot.fail(500)
    elif breakage == "503-html":
        knot.fail(503, body="<html>maintenance</html>")
    elif breakage == "no-files":
        knot.answer_json({"ref": repo.sha, "files": {"ci.yml": 1}}, nsid=TREE)
    elif breakage == "bad-base64":
        knot.answer_json({"content": "!!!not base64", "encoding": "base64"}, nsid=BLOB)
    else:
        knot.answer_json({"error": "Moved"}, status=302, nsid=TREE)

    await expect_error(spindle, repo, 502, "UpstreamFailure", fragment)


async def test_falls_back_to_did_slash_name_on_an_older_knot_and_remembers_it(
    spindle: Spindle, make_repo: MakeRepo, old_knot: TestKnot
):
    repo = await make_repo({".github/workflows/ci.yml": CI_YML}, on=old_knot)
    did_name = f"{repo.git.did}/{repo.git.name}"

    first = await spindle.trigger(repo.body(), by=repo.owner)
    tried = [r.query["repo"] for r in old_knot.xrpc_requests(TREE)]
    second_sha = repo.git.commit({".github/workflows/ci.yml": CI_YML + "# changed\n"})
    old_knot.clear_requests()
    second = await spindle.trigger(repo.body(ref=second_sha), by=repo.owner)

    assert first.status_code == 200, first.text
    assert tried == [repo.git.did, did_name]
    assert {r.query["repo"] for r in old_knot.xrpc_requests(BLOB)} == {did_name}
    assert second.status_code == 200, second.text
    assert [r.query["repo"] for r in old_knot.xrpc_requests()] == [did_name, did_name]


async def test_asks_current_knots_with_the_repo_did(spindle: Spindle, make_repo: MakeRepo, knot: TestKnot):
    repo = await make_repo({".github/workflows/ci.yml": CI_YML})

    response = await spindle.trigger(repo.body(), by=repo.owner)

    assert response.status_code == 200
    assert {r.query["repo"] for r in knot.xrpc_requests()} == {repo.git.did}


async def test_a_warm_trigger_reads_the_commit_from_cache(
    spindle: Spindle, make_repo: MakeRepo, knot: TestKnot
):
    repo = await make_repo({".github/workflows/ci.yml": CI_YML})
    await spindle.trigger(repo.body(), by=repo.owner)
    knot.clear_requests()

    response = await spindle.trigger(repo.body(), by=repo.owner)  # a new record key, the same commit

    assert response.status_code == 200
    assert knot.xrpc_requests() == []
    assert await spindle.count(Pipeline) == 2


async def test_decodes_workflows_the_knot_sends_base64_encoded(
    spindle: Spindle, make_repo: MakeRepo, knot: TestKnot
):
    repo = await make_repo({".github/workflows/ci.yml": "# é\n" + CI_YML})
    knot.blob_encoding = "base64"

    response = await spindle.trigger(repo.body(), by=repo.owner)

    assert response.status_code == 200, response.text
    [pipeline] = await spindle.pipelines()
    assert pipeline.workflow_runs[0].source == "# é\n" + CI_YML


async def test_more_than_50_workflow_files_is_invalid(spindle: Spindle, make_repo: MakeRepo):
    repo = await make_repo({f".github/workflows/w{i:02}.yml": CI_YML for i in range(51)})

    await expect_error(spindle, repo, 400, "InvalidRequest", "at most 50")


async def test_a_workflow_file_over_512_kib_is_invalid(spindle: Spindle, make_repo: MakeRepo):
    big = CI_YML + "#" + "x" * (512 * 1024) + "\n"
    repo = await make_repo({".github/workflows/big.yml": big})

    await expect_error(spindle, repo, 400, "InvalidRequest", "big.yml is larger than 512 KiB")


async def test_a_workflow_that_does_not_parse_is_invalid_naming_the_file(
    spindle: Spindle, make_repo: MakeRepo
):
    repo = await make_repo(
        {".github/workflows/ci.yml": CI_YML, ".github/workflows/broken.yml": "on: [push\n"}
    )

    await expect_error(spindle, repo, 400, "InvalidRequest", ".github/workflows/broken.yml")


async def test_on_as_a_string_a_list_or_a_map_all_run(spindle: Spindle, make_repo: MakeRepo):
    repo = await make_repo(
        {
            ".github/workflows/a.yml": workflow("push"),
            ".github/workflows/b.yml": workflow("[push, pull_request]"),
            ".github/workflows/c.yml": workflow("\n  push:\n    branches: [main]\n  workflow_dispatch:"),
            ".github/workflows/d.yml": workflow("push").replace("on:", "'on':"),
        }
    )

    response = await spindle.trigger(repo.body(), by=repo.owner)

    assert response.status_code == 200, response.text
    assert [w["workflow"] for w in response.json()["workflows"]] == ["a", "b", "c", "d"]


async def test_two_files_with_the_same_stem_are_invalid(spindle: Spindle, make_repo: MakeRepo):
    repo = await make_repo({".github/workflows/ci.yml": CI_YML, ".github/workflows/ci.yaml": CI_YML})

    await expect_error(spindle, repo, 400, "InvalidRequest", "the same name 'ci'")


async def test_fills_declared_dispatch_inputs_and_passes_others_through(
    spindle: Spindle, make_repo: MakeRepo
):
    repo = await make_repo({".github/workflows/deploy.yml": DISPATCH, ".github/workflows/ci.yml": CI_YML})

    response = await spindle.trigger(repo.body(inputs={"target": "staging"}), by=repo.owner)

    assert response.status_code == 200, response.text
    [pipeline] = await spindle.pipelines()
    inputs = {run.name: run.inputs for run in pipeline.workflow_runs}
    assert inputs == {
        "ci": {"target": "staging"},
        "deploy": {"target": "staging", "dry_run": "true", "replicas": "3", "note": ""},
    }
    assert pipeline.trigger == {"inputs": {"target": "staging"}}


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({}, "inputs.target is required by .github/workflows/deploy.yml"),
        ({"target": "moon"}, "inputs.target must be one of staging, production"),
        ({"target": "staging", "dry_run": "yes"}, "inputs.dry_run must be true or false"),
        ({"target": "staging", "replicas": "three"}, "inputs.replicas must be a number"),
        ({"target": "staging", "colour": "red"}, "inputs.colour is not declared"),
    ],
    ids=["required", "choice", "boolean", "number", "unknown"],
)
async def test_checks_inputs_against_workflow_dispatch_declarations(
    spindle: Spindle, make_repo: MakeRepo, inputs: dict[str, str], fragment: str
):
    repo = await make_repo({".github/workflows/deploy.yml": DISPATCH})

    await expect_error(spindle, repo, 400, "InvalidRequest", fragment, inputs=inputs)
