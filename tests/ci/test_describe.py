"""sh.tangled.ci.describeWorkflowDefinition: the workflow files at a commit and their fingerprint."""

from __future__ import annotations

from app.ci import schemas
from tests.ci.conftest import CI_YML, Served, valid_output


async def describe(served: Served, sha: str) -> dict:
    response = await served.query(schemas.DESCRIBE_NSID, {"repo": served.did, "sha": sha})
    assert response.status_code == 200, response.text
    return valid_output(schemas.DESCRIBE_NSID, response.json())


async def test_names_the_workflow_files_and_fingerprints_exactly_their_content(served: Served):
    first = await describe(served, served.sha)
    readme = served.git.commit({"README.md": "docs only\n"})
    same = await describe(served, readme)
    changed = served.git.commit({".github/workflows/ci.yml": CI_YML + "# changed\n"})
    different = await describe(served, changed)

    assert first["derived"] is True
    assert first["workflows"] == [".github/workflows/ci.yml", ".github/workflows/lint.yaml"]
    assert first["hash"].startswith("sha256:") and len(first["hash"]) == len("sha256:") + 64
    assert same["hash"] == first["hash"]
    assert different["hash"] != first["hash"]


async def test_a_commit_without_workflows_is_described_as_having_none(served: Served):
    bare = served.git.commit({".github/workflows/ci.yml": None, ".github/workflows/lint.yaml": None})
    answer = await describe(served, bare)
    assert answer["derived"] is True and answer["workflows"] == []


async def test_refuses_a_sha_that_is_not_a_full_commit(served: Served):
    response = await served.query(schemas.DESCRIBE_NSID, {"repo": served.did, "sha": "main"})
    assert response.status_code == 400 and response.json()["message"].startswith("sha")


async def test_a_repo_this_spindle_does_not_serve_is_refused(served: Served):
    response = await served.query(
        schemas.DESCRIBE_NSID, {"repo": "did:plc:nobodyhereatallxxxxxxxxx", "sha": served.sha}
    )
    assert response.status_code == 403 and "not served" in response.json()["message"]
