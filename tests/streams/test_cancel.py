"""sh.tangled.pipeline.cancelPipeline: service auth, the trigger's rights, clear 400s, then cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.repos import service as repos_service
from app.runs.cancel import CANCEL_NSID
from app.runs.models import Status, StatusEvent, WorkflowRun
from tests.streams.runs import KNOT, REPO_DID, REPO_NAME, Recorder
from tests.support.app import context_of, running_app
from tests.support.keys import SigningKey, mint
from tests.support.plc import FakePlc

URL = f"/xrpc/{CANCEL_NSID}"
PIPELINE_URI = "at://did:web:127.0.0.1%3A5555/sh.tangled.pipeline/"
REPO_URI = f"at://{REPO_DID}/sh.tangled.repo/{REPO_NAME}"


@dataclass
class Account:
    key: SigningKey
    did: str


@dataclass
class Spindle:
    client: httpx.AsyncClient
    recorder: Recorder
    did: str

    async def cancel(self, who: Account, body: Any, *, lxm: str = CANCEL_NSID) -> httpx.Response:
        token = mint(who.key, iss=who.did, aud=self.did, lxm=lxm)
        return await self.client.post(URL, json=body, headers={"Authorization": f"Bearer {token}"})

    async def run(self, run_id: int) -> WorkflowRun:
        async with self.recorder.sessionmaker() as session:
            run = await session.get(WorkflowRun, run_id)
            assert run is not None
            return run

    async def statuses(self, run_id: int) -> list[tuple[str, str | None]]:
        async with self.recorder.sessionmaker() as session:
            events = await session.scalars(
                select(StatusEvent).where(StatusEvent.workflow_run_id == run_id).order_by(StatusEvent.id)
            )
            return [(e.status.value, e.error) for e in events]


def account(plc: FakePlc) -> Account:
    key = SigningKey.generate("ES256K")
    return Account(key, plc.register(key))


@pytest.fixture
def owner(plc: FakePlc) -> Account:
    return account(plc)


@pytest.fixture
def collaborator(plc: FakePlc) -> Account:
    return account(plc)


@pytest.fixture
def spindle_owner(plc: FakePlc) -> Account:
    return account(plc)


@pytest.fixture
async def spindle(make_settings, database_url, owner, collaborator, spindle_owner) -> AsyncIterator[Spindle]:
    """The service in process, with the repo registered: owned by `owner`, `collaborator` on it."""
    settings = make_settings(database_url=database_url, owner=spindle_owner.did)
    async with running_app(settings) as (app, client):
        ctx = context_of(app)
        async with ctx.sessionmaker() as session:
            await repos_service.add(
                session=session,
                knot=KNOT,
                did=REPO_DID,
                name=REPO_NAME,
                owner_did=owner.did,
                collaborators=[collaborator.did],
            )
        yield Spindle(client, Recorder(ctx.sessionmaker, ctx.broker), settings.did)


def body(rkey: str, workflow: str = "ci", **overrides: Any) -> dict[str, Any]:
    return {"repo": REPO_URI, "pipeline": PIPELINE_URI + rkey, "workflow": workflow, **overrides}


async def test_the_repo_owner_cancels_a_pending_workflow(spindle: Spindle, owner: Account):
    runs = await spindle.recorder.pipeline("3cpending", ("ci", "lint"))
    response = await spindle.cancel(owner, body("3cpending"))

    assert response.status_code == 200 and response.json() == {}
    assert (await spindle.run(runs["ci"])).status is Status.CANCELLED
    assert await spindle.statuses(runs["ci"]) == [
        ("pending", None),
        ("cancelled", "cancelled before it started"),
    ]
    assert (await spindle.run(runs["lint"])).status is Status.PENDING


async def test_a_collaborator_cancels_a_workflow_running_in_another_process(
    spindle: Spindle, collaborator: Account
):
    run = (await spindle.recorder.pipeline("3crunning"))["ci"]
    await spindle.recorder.move(run, Status.RUNNING)
    response = await spindle.cancel(collaborator, body("3crunning"))

    assert response.status_code == 200
    # The process running it sees the request on its next poll and stops the step.
    stored = await spindle.run(run)
    assert stored.cancel_requested and stored.status is Status.RUNNING


async def test_the_spindle_owner_may_cancel_any_registered_repo(spindle: Spindle, spindle_owner: Account):
    run = (await spindle.recorder.pipeline("3cowner"))["ci"]
    response = await spindle.cancel(spindle_owner, body("3cowner"))
    assert response.status_code == 200
    assert (await spindle.run(run)).status is Status.CANCELLED


async def test_tangleds_unescaped_did_web_pipeline_uri_is_understood(spindle: Spindle, owner: Account):
    run = (await spindle.recorder.pipeline("3craw"))["ci"]
    raw = f"at://did:web:{KNOT}/sh.tangled.pipeline/3craw"
    response = await spindle.cancel(owner, body("3craw", pipeline=raw))
    assert response.status_code == 200
    assert (await spindle.run(run)).status is Status.CANCELLED


async def test_a_finished_workflow_is_left_as_it_finished(spindle: Spindle, owner: Account):
    run = (await spindle.recorder.pipeline("3cdone"))["ci"]
    await spindle.recorder.move(run, Status.SUCCESS)
    response = await spindle.cancel(owner, body("3cdone"))
    assert response.status_code == 200 and response.json() == {}
    assert [s for s, _ in await spindle.statuses(run)] == ["pending", "success"]


async def test_an_account_without_rights_on_the_repo_is_forbidden(spindle: Spindle, plc: FakePlc):
    run = (await spindle.recorder.pipeline("3cstranger"))["ci"]
    response = await spindle.cancel(account(plc), body("3cstranger"))
    assert response.status_code == 403 and response.json()["error"] == "Forbidden"
    assert (await spindle.run(run)).status is Status.PENDING


async def test_a_repo_that_is_not_registered_is_forbidden(spindle: Spindle, owner: Account):
    await spindle.recorder.pipeline("3cunreg")
    other = f"at://{REPO_DID}/sh.tangled.repo/gadgets"
    response = await spindle.cancel(owner, body("3cunreg", repo=other))
    assert response.status_code == 403 and "gadgets" in response.json()["message"]


async def test_rights_on_one_repo_do_not_reach_a_pipeline_of_another(
    spindle: Spindle, owner: Account, collaborator: Account
):
    async with spindle.recorder.sessionmaker() as session:
        await repos_service.add(
            session=session,
            knot=KNOT,
            did=REPO_DID,
            name="gadgets",
            owner_did=collaborator.did,
            collaborators=[],
        )
    run = (await spindle.recorder.pipeline("3cother", repo_name="gadgets"))["ci"]
    response = await spindle.cancel(owner, body("3cother"))
    assert response.status_code == 404 and response.json()["error"] == "NotFound"
    assert (await spindle.run(run)).status is Status.PENDING


async def test_an_unknown_workflow_is_not_found(spindle: Spindle, owner: Account):
    await spindle.recorder.pipeline("3cknown")
    for rkey, workflow in (("3cknown", "deploy"), ("3cmissing", "ci")):
        response = await spindle.cancel(owner, body(rkey, workflow))
        assert response.status_code == 404
        assert response.json()["error"] == "NotFound" and workflow in response.json()["message"]


async def test_cancelling_needs_a_service_auth_token_for_this_method(spindle: Spindle, owner: Account):
    await spindle.recorder.pipeline("3cauth")
    anonymous = await spindle.client.post(URL, json=body("3cauth"))
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    other_method = await spindle.cancel(
        owner, body("3cauth"), lxm="com.publicdomainrelay.temp.tangled.spindle.trigger"
    )
    assert other_method.status_code == 401 and other_method.json()["error"] == "BadJwtLexiconMethod"


async def test_authentication_comes_before_any_word_about_the_body(spindle: Spindle):
    response = await spindle.client.post(URL, content=b"not json", headers={"Content-Type": "text/plain"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"repo": None}, "repo"),
        ({"repo": 7}, "repo"),
        ({"repo": "https://example.com/widgets"}, "repo"),
        ({"repo": f"at://{REPO_DID}/sh.tangled.pipeline/{REPO_NAME}"}, "repo"),
        ({"repo": "at://not-a-did/sh.tangled.repo/widgets"}, "repo"),
        ({"repo": f"at://{REPO_DID}/sh.tangled.repo/.."}, "repo"),
        ({"pipeline": None}, "pipeline"),
        ({"pipeline": "at://did:plc:abc/sh.tangled.pipeline/3c"}, "pipeline"),
        ({"pipeline": "at://did:web:knot.example/sh.tangled.repo/3c"}, "pipeline"),
        ({"pipeline": "at://did:web:http%3A%2F%2Fevil/sh.tangled.pipeline/3c"}, "pipeline"),
        ({"pipeline": PIPELINE_URI + "bad%20rkey"}, "pipeline"),
        ({"workflow": None}, "workflow"),
        ({"workflow": ""}, "workflow"),
        ({"workflow": "ci\nfoo"}, "workflow"),
        ({"workflow": ["ci"]}, "workflow"),
    ],
)
async def test_a_malformed_body_is_a_400_naming_the_field(spindle: Spindle, owner: Account, change, field):
    request = {k: v for k, v in {**body("3cbad"), **change}.items() if v is not None}
    response = await spindle.cancel(owner, request)
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
    assert response.json()["message"].startswith(field), response.json()["message"]


async def test_a_body_that_is_not_a_json_object_is_a_400(spindle: Spindle, owner: Account):
    response = await spindle.cancel(owner, ["not", "an", "object"])
    assert response.status_code == 400 and response.json()["error"] == "InvalidRequest"


async def test_tangleds_repo_uri_with_a_tid_record_key_names_the_repo(spindle: Spindle, owner: Account):
    tid = "3mbx7k2lq5c2a"
    async with spindle.recorder.sessionmaker() as session:
        await repos_service.add(
            session=session,
            knot=KNOT,
            did=REPO_DID,
            name="gadgets",
            owner_did=owner.did,
            collaborators=[],
            rkey=tid,
        )
    run = (await spindle.recorder.pipeline("3ctid", repo_name="gadgets"))["ci"]
    by_name = await spindle.cancel(owner, body("3ctid", repo=f"at://{REPO_DID}/sh.tangled.repo/gadgets"))
    # A repo that has a record key is known by it, not by its name.
    assert by_name.status_code == 403
    response = await spindle.cancel(owner, body("3ctid", repo=f"at://{REPO_DID}/sh.tangled.repo/{tid}"))
    assert response.status_code == 200, response.text
    assert (await spindle.run(run)).status is Status.CANCELLED
