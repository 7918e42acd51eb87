"""Who may trigger what (403), checked after the body and before any knot is contacted."""

from __future__ import annotations

from pathlib import Path

from app.runs.models import Pipeline
from tests.runs.conftest import CI_YML, Identity, KnotRepo, Spindle
from tests.support.knot import TestKnot


async def test_rejects_an_actor_other_than_the_token_issuer(spindle: Spindle, repo: KnotRepo, bob: Identity):
    response = await spindle.trigger(repo.body(), by=bob)  # the body's actor is alice

    assert response.status_code == 403
    assert response.json()["error"] == "Forbidden"
    assert repo.knot.xrpc_requests() == []


async def test_rejects_an_actor_without_rights_on_the_repo(spindle: Spindle, repo: KnotRepo, bob: Identity):
    response = await spindle.trigger(repo.body(actor=bob.did), by=bob)

    assert response.status_code == 403
    assert "neither the owner nor a collaborator" in response.json()["message"]
    assert repo.knot.xrpc_requests() == []


async def test_rejects_a_repo_that_is_not_registered(spindle: Spindle, repo: KnotRepo):
    unregistered = repo.knot.create_repo(repo.owner.did, "secret")
    sha = unregistered.commit({".github/workflows/ci.yml": CI_YML})

    response = await spindle.trigger(repo.body(repoName="secret", ref=sha), by=repo.owner)

    assert response.status_code == 403
    assert "not registered" in response.json()["message"]
    assert repo.knot.xrpc_requests() == []


async def test_rejects_a_registered_name_under_another_repo_did(
    spindle: Spindle, repo: KnotRepo, bob: Identity
):
    response = await spindle.trigger(repo.body(repoDid=bob.did), by=repo.owner)

    assert response.status_code == 403


async def test_never_contacts_a_knot_that_is_not_registered(spindle: Spindle, repo: KnotRepo, tmp_path: Path):
    # The same repo is on another knot; naming that knot must not make the spindle fetch from it.
    with TestKnot(tmp_path / "elsewhere") as elsewhere:
        copy = elsewhere.create_repo(repo.git.did, repo.git.name)
        sha = copy.commit({".github/workflows/ci.yml": CI_YML})

        response = await spindle.trigger(repo.body(knot=elsewhere.host, ref=sha), by=repo.owner)

        assert response.status_code == 403
        assert response.json()["error"] == "Forbidden"
        assert elsewhere.requests == []
    assert repo.knot.xrpc_requests() == []
    assert await spindle.count(Pipeline) == 0
