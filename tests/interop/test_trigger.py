"""The trigger procedure end to end against real peers.

A client with a session on the reference PDS calls the trigger THROUGH the PDS
(`atproto-proxy: did:web:localhost%3A<port>#tangled_spindle`). The PDS resolves our did:web
document over http (dev-env: `localhost` only), reads the `#tangled_spindle` endpoint, mints a
service-auth JWT (aud = our bare DID, lxm = the NSID) with the account's key and forwards the call
to our service under uvicorn, which checks it against the account's document on the dev-env PLC,
reads the workflow from a test knot serving a real git repo, records the run and executes it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.database import create_engine, create_sessionmaker
from app.repos import service as repo_service
from app.runs.models import Status
from tests.interop.harness import Account, ReferencePds, Spindle
from tests.support.knot import GitRepo, TestKnot

pytestmark = pytest.mark.pds

TRIGGER = "com.publicdomainrelay.temp.tangled.spindle.trigger"
CANCEL = "sh.tangled.pipeline.cancelPipeline"
FINISHED = {s.value for s in Status if s.is_finished}

WORKFLOW = """\
name: ci
on:
  workflow_dispatch:
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - name: show the commit
        run: |
          echo "checked out $(git rev-parse HEAD)"
          cat README.md
"""
README = "a README committed by the interop test\n"
SLOW_WORKFLOW = """\
on: workflow_dispatch
jobs:
  wait:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 120
"""


@dataclass
class Scenario:
    pds: ReferencePds
    spindle: Spindle
    knot: TestKnot
    repo: GitRepo
    sha: str
    alice: Account  # owns the repo and is allowed to trigger it
    bob: Account  # a real account on the same PDS with no rights to the repo

    def body(self, *, actor: str | None = None, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "knot": self.knot.host,
            "pipelineRkey": "interop-" + secrets.token_hex(6),
            "actor": actor or self.alice.did,
            "repoDid": self.repo.did,
            "repoName": self.repo.name,
            "ref": self.sha,
        }
        values.update(overrides)
        return values

    def through_pds(self, account: Account, body: dict[str, Any], *, nsid: str = TRIGGER) -> httpx.Response:
        """Call a procedure on the account's PDS, which proxies it to our service."""
        return self.pds.call_through_proxy(account, nsid, body, service_did=self.spindle.did)


@pytest.fixture
async def scenario(reference_pds: ReferencePds, spindle: Spindle, knot: TestKnot) -> Scenario:
    alice = reference_pds.create_account()
    bob = reference_pds.create_account()
    repo = knot.create_repo(alice.did, "interop")
    sha = repo.commit({".github/workflows/ci.yml": WORKFLOW, "README.md": README})
    engine = create_engine(spindle.settings.resolved_database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            await repo_service.add(
                session=session,
                knot=knot.host,
                did=repo.did,
                name=repo.name,
                owner_did=alice.did,
                collaborators=[],
            )
    finally:
        await engine.dispose()
    return Scenario(pds=reference_pds, spindle=spindle, knot=knot, repo=repo, sha=sha, alice=alice, bob=bob)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0)) as client:
        yield client


async def follow_status(
    http: httpx.AsyncClient,
    status_url: str,
    *,
    on_event: Callable[[dict[str, Any]], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Every status the Server-Sent Events stream sends (each also to `on_event`), until it ends."""
    seen: list[dict[str, Any]] = []
    # The stream ends by itself at a finished state; the read timeout only stops a hung test.
    timeout = httpx.Timeout(10.0, read=90.0)
    async with http.stream("GET", status_url, headers={"Accept": "text/event-stream"}, timeout=timeout) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line[len("data:") :]))
                on_event(seen[-1])
    return seen


def assert_submitted(response: httpx.Response, scenario: Scenario, body: dict[str, Any]) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["submitted"] is True
    assert (result["knot"], result["pipelineRkey"], result["ref"]) == (
        body["knot"],
        body["pipelineRkey"],
        body["ref"],
    )
    assert [w["workflow"] for w in result["workflows"]] == ["ci"]
    base = scenario.spindle.url
    path = f"{body['knot']}/{body['pipelineRkey']}/ci"
    assert result["workflows"][0]["statusUrl"] == f"{base}/status/{path}"
    assert result["workflows"][0]["logsUrl"] == f"ws{base[len('http') :]}/logs/{path}"
    return result


class TestOnSqliteAndPostgres:
    """The whole path once per database kind: the run is recorded and followed through either."""

    @pytest.fixture
    def spindle_database_url(self, database_url: str) -> str:
        return database_url

    async def test_trigger_proxied_by_the_reference_pds_runs_the_workflow_to_success(
        self, scenario: Scenario, http: httpx.AsyncClient
    ) -> None:
        body = scenario.body()
        response = scenario.through_pds(scenario.alice, body)
        result = assert_submitted(response, scenario, body)

        status_url = result["workflows"][0]["statusUrl"]
        streamed = await follow_status(http, status_url)
        assert streamed[-1]["status"] == "success", streamed
        final = (await http.get(status_url)).json()
        assert [e["status"] for e in final["events"]] == ["pending", "running", "success"]
        # The step checked the repo out from the knot over git HTTP, at exactly the triggered commit.
        log = await http.get(result["workflows"][0]["logsUrl"].replace("ws", "http", 1))
        assert log.status_code == 200
        assert f"checked out {scenario.sha}" in log.text
        assert README.strip() in log.text


async def test_trigger_sent_directly_with_a_get_service_auth_token_is_submitted(
    scenario: Scenario, http: httpx.AsyncClient
) -> None:
    token = scenario.pds.service_auth(scenario.alice, aud=scenario.spindle.did, lxm=TRIGGER)
    body = scenario.body()
    response = await http.post(
        f"{scenario.spindle.url}/xrpc/{TRIGGER}", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    result = assert_submitted(response, scenario, body)
    status = await http.get(result["workflows"][0]["statusUrl"])
    assert status.status_code == 200
    assert status.json()["status"] in {"pending", "running"} | FINISHED


async def test_proxied_trigger_naming_another_account_as_actor_is_forbidden(scenario: Scenario) -> None:
    # Bob's PDS vouches for Bob; the body claims Alice: iss != actor.
    body = scenario.body(actor=scenario.alice.did)
    response = scenario.through_pds(scenario.bob, body)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "Forbidden"


async def test_proxied_trigger_by_an_account_without_rights_to_the_repo_is_forbidden(
    scenario: Scenario,
) -> None:
    body = scenario.body(actor=scenario.bob.did)
    response = scenario.through_pds(scenario.bob, body)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "Forbidden"


async def test_direct_trigger_with_a_token_whose_lxm_names_another_method_is_rejected(
    scenario: Scenario, http: httpx.AsyncClient
) -> None:
    token = scenario.pds.service_auth(scenario.alice, aud=scenario.spindle.did, lxm=CANCEL)
    response = await http.post(
        f"{scenario.spindle.url}/xrpc/{TRIGGER}",
        json=scenario.body(),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "BadJwtLexiconMethod"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_direct_trigger_replaying_a_get_service_auth_token_is_rejected(
    scenario: Scenario, http: httpx.AsyncClient
) -> None:
    token = scenario.pds.service_auth(scenario.alice, aud=scenario.spindle.did, lxm=TRIGGER)
    url = f"{scenario.spindle.url}/xrpc/{TRIGGER}"
    headers = {"Authorization": f"Bearer {token}"}
    first = await http.post(url, json=scenario.body(), headers=headers)
    assert first.status_code == 200, first.text
    replay = await http.post(url, json=scenario.body(), headers=headers)
    assert replay.status_code == 401, replay.text


async def test_invalid_body_error_reaches_the_client_through_the_proxy(scenario: Scenario) -> None:
    # The PDS passes our 4xx status, error name and message through (not its headers).
    body = scenario.body(ref="main")
    response = scenario.through_pds(scenario.alice, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "InvalidRequest"
    assert "ref" in response.json()["message"]


async def test_cancel_proxied_by_the_reference_pds_stops_a_running_workflow(
    scenario: Scenario, http: httpx.AsyncClient
) -> None:
    sha = scenario.repo.commit({".github/workflows/ci.yml": SLOW_WORKFLOW})
    body = scenario.body(ref=sha)
    result = assert_submitted(scenario.through_pds(scenario.alice, body), scenario, body)
    knot_did = "did:web:" + body["knot"].replace(":", "%3A")
    cancel = {
        "repo": f"at://{scenario.repo.did}/sh.tangled.repo/{scenario.repo.name}",
        "pipeline": f"at://{knot_did}/sh.tangled.pipeline/{body['pipelineRkey']}",
        "workflow": "ci",
    }

    cancelled: list[httpx.Response] = []

    def cancel_once_running(event: dict[str, Any]) -> None:
        if event["status"] == "running" and not cancelled:
            cancelled.append(scenario.through_pds(scenario.alice, cancel, nsid=CANCEL))

    status_url = result["workflows"][0]["statusUrl"]
    streamed = await follow_status(http, status_url, on_event=cancel_once_running)
    assert len(cancelled) == 1, streamed
    assert cancelled[0].status_code == 200, cancelled[0].text
    assert streamed[-1]["status"] == "cancelled", streamed
    final = (await http.get(status_url)).json()
    assert [e["status"] for e in final["events"]] == ["pending", "running", "cancelled"]
