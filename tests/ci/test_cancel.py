"""sh.tangled.ci.cancelPipeline: a pipeline by its TID, whole or some workflows, with the trigger's rights."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.ci import schemas
from app.database import utcnow
from app.runs.models import Pipeline, Status, WorkflowRun
from app.runs.status import transition
from app.runs.tid import new_tid
from tests.ci.conftest import Served
from tests.runs.conftest import Identity


async def pending(
    served: Served, workflows: tuple[str, ...] = ("ci", "lint"), *, repo_did: str | None = None
) -> str:
    """A pipeline of the repo whose runs wait, claimed by an engine elsewhere (the service's own
    scheduler leaves them be); its TID."""
    tid = new_tid()
    async with served.spindle.sessions() as session:
        pipeline = Pipeline(
            knot=served.knot.host,
            rkey=tid,
            tid=tid,
            repo_did=repo_did or served.did,
            repo_name=served.git.name,
            sha=served.sha,
            actor=served.owner.did,
            trigger_kind="manual",
            trigger={},
            request_digest=tid,
        )
        runs = [
            WorkflowRun(
                pipeline=pipeline,
                name=name,
                path=f".github/workflows/{name}.yml",
                source="on: push\n",
                claimed_by="elsewhere",
                heartbeat_at=utcnow(),
            )
            for name in workflows
        ]
        session.add(pipeline)
        await session.flush()
        for run in runs:
            transition(session, run, Status.PENDING)
        await session.commit()
    return tid


async def statuses(served: Served, tid: str) -> dict[str, str]:
    async with served.spindle.sessions() as session:
        rows = await session.execute(
            select(WorkflowRun.name, WorkflowRun.status).join(Pipeline).where(Pipeline.tid == tid)
        )
        return {name: Status(status).value for name, status in rows}


async def cancel(served: Served, who: Identity | None, tid: str, **body: Any) -> Any:
    return await served.call(schemas.CANCEL_NSID, who, body={"repo": served.did, "pipeline": tid, **body})


async def test_a_collaborator_cancels_a_whole_pipeline(served: Served, bob: Identity):
    tid = await pending(served)
    response = await cancel(served, bob, tid)
    assert response.status_code == 200 and response.json() == {}
    assert await statuses(served, tid) == {"ci": "cancelled", "lint": "cancelled"}


async def test_named_workflows_are_cancelled_and_the_others_left(served: Served, alice: Identity):
    tid = await pending(served)
    response = await cancel(served, alice, tid, workflows=["lint.yaml"])
    assert response.status_code == 200
    assert await statuses(served, tid) == {"ci": "pending", "lint": "cancelled"}


async def test_the_spindle_owner_may_cancel(served: Served, spindle_owner: Identity):
    tid = await pending(served)
    assert (await cancel(served, spindle_owner, tid)).status_code == 200
    assert set((await statuses(served, tid)).values()) == {"cancelled"}


async def test_a_stranger_is_forbidden(served: Served, carol: Identity):
    tid = await pending(served)
    response = await cancel(served, carol, tid)
    assert response.status_code == 403 and response.json()["error"] == "Forbidden"
    assert set((await statuses(served, tid)).values()) == {"pending"}


async def test_needs_a_token_for_this_method(served: Served, alice: Identity):
    tid = await pending(served)
    anonymous = await cancel(served, None, tid)
    assert anonymous.status_code == 401
    body = {"repo": served.did, "pipeline": tid}
    wrong = await served.call(schemas.CANCEL_NSID, alice, body=body, lxm=schemas.TRIGGER_NSID)
    assert wrong.status_code == 401 and wrong.json()["error"] == "BadJwtLexiconMethod"
    assert set((await statuses(served, tid)).values()) == {"pending"}


async def test_rights_on_one_repo_do_not_reach_a_pipeline_of_another(served: Served, alice: Identity):
    other = await pending(served, repo_did="did:plc:someoneelsesrepoxxxxxxxxx")
    response = await cancel(served, alice, other)
    assert response.status_code == 404 and response.json()["error"] == "PipelineNotFound"
    assert set((await statuses(served, other)).values()) == {"pending"}


async def test_an_unknown_pipeline_or_workflow_is_not_found(served: Served, alice: Identity):
    tid = await pending(served)
    unknown = await cancel(served, alice, new_tid())
    assert unknown.status_code == 404 and unknown.json()["error"] == "PipelineNotFound"
    workflow = await cancel(served, alice, tid, workflows=["deploy"])
    assert workflow.status_code == 404 and "deploy" in workflow.json()["message"]
    assert set((await statuses(served, tid)).values()) == {"pending"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pipeline": "3cpending"}, "pipeline"),
        ({"repo": "widgets"}, "repo"),
        ({"workflows": [""]}, "workflows"),
    ],
)
async def test_refuses_a_malformed_body_naming_the_field(served: Served, alice: Identity, change, field):
    tid = await pending(served)
    response = await served.call(
        schemas.CANCEL_NSID, alice, body={"repo": served.did, "pipeline": tid, **change}
    )
    assert response.status_code == 400 and response.json()["message"].startswith(field)
