"""schemathesis against the service's own /openapi.json, on a live server: no 5xx, answers conform.

Cases for every operation are generated from the document, positive and negative, with a fresh
valid service-auth token on each (schemathesis's `ignored_auth` check also replays them without
one). Checks left out, and why:
- positive_data_acceptance: a schema-valid trigger is still refused when the repo is not
  registered (403) or the commit is not on the knot (400); the document cannot say which repos
  exist, so "valid by the schema" does not mean "must succeed".
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.runs.schemas import TRIGGER_NSID
from tests.hostile.conftest import Hostile
from tests.support.keys import mint

EXCLUDED = [positive_data_acceptance]


def test_the_openapi_document_describes_the_xrpc_procedures(hostile: Hostile):
    document = httpx.get(f"{hostile.spindle.server.url}/openapi.json").json()

    trigger = document["paths"][f"/xrpc/{TRIGGER_NSID}"]["post"]
    assert trigger["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "knot",
        "pipelineRkey",
        "actor",
        "repoDid",
        "repoName",
        "ref",
    ]
    assert trigger["security"] == [{"serviceAuth": []}]
    assert all("422" not in op["responses"] for ops in document["paths"].values() for op in ops.values())


def run_schemathesis(
    hostile: Hostile,
    mode: GenerationMode,
    examples: int,
    path_parameters: dict[str, str] | None = None,
    path_regex: str | None = None,
) -> dict[int, int]:
    base = hostile.spindle.server.url
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    if path_regex is not None:
        schema = schema.include(path_regex=path_regex)
    seen: dict[int, int] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def check(case: schemathesis.Case) -> None:
        headers = {}
        if case.path.startswith("/xrpc/") and case.method.upper() == "POST":
            nsid = case.path.removeprefix("/xrpc/")
            token = mint(hostile.alice.key, iss=hostile.alice.did, aud=hostile.spindle.settings.did, lxm=nsid)
            headers["Authorization"] = f"Bearer {token}"
        response = case.call(base_url=base, headers=headers, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, excluded_checks=EXCLUDED, headers=headers)

    check()
    return seen


def test_positive_cases_from_the_openapi_document_conform(hostile: Hostile):
    seen = run_schemathesis(hostile, GenerationMode.POSITIVE, 100)

    assert not any(code >= 500 for code in seen), seen


def test_negative_cases_from_the_openapi_document_are_refused_with_4xx(hostile: Hostile):
    seen = run_schemathesis(hostile, GenerationMode.NEGATIVE, 100)

    assert not any(code >= 500 for code in seen), seen
    assert any(400 <= code < 500 for code in seen), seen


def test_cases_aimed_at_a_real_run_conform(hostile: Hostile):
    # Random path segments name no run (404): aim the stream routes at one that exists.
    with httpx.Client(timeout=30) as client:
        token = hostile.alice.token(hostile.spindle.settings.did)
        body = hostile.repo.body()
        answer = client.post(
            f"{hostile.spindle.server.url}/xrpc/{TRIGGER_NSID}",
            json=body,
            headers={"authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200, answer.text
    run = {"knot": body["knot"], "rkey": body["pipelineRkey"], "workflow": "ci"}

    # Only the routes that name a run by path: the other operations would dilute the 60 cases.
    seen = run_schemathesis(hostile, GenerationMode.POSITIVE, 60, path_parameters=run, path_regex=r"\{rkey\}")

    assert not any(code >= 500 for code in seen), seen
    assert seen.get(200, 0) >= 10, seen
