"""The trigger's authentication (401) and body checks (400/413), in that order, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from app.config import Settings
from app.runs.models import Pipeline
from tests.conftest import OWNER_DID
from tests.runs.conftest import CI_YML, Identity, KnotRepo, Spindle, new_identity, serve
from tests.support.db import new_database
from tests.support.knot import TestKnot
from tests.support.plc import FakePlc
from tests.support.servers import free_port

# Every check here happens before the database is written: one spindle on SQLite, one knot and
# one repo serve the whole module (each test uses a fresh record key and looks at deltas).
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("trigger-input")
    new_database("sqlite", tmp)  # migrated here, outside the event loop
    return tmp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(plc: FakePlc, module_tmp: Path) -> AsyncIterator[tuple[Spindle, KnotRepo]]:
    tmp = module_tmp
    port = free_port()
    settings = Settings(
        hostname=f"127.0.0.1:{port}",
        owner=OWNER_DID,
        plc_url=plc.url,  # type: ignore[attr-defined]
        dev=True,
        data_dir=tmp / "data",
        database_url=f"sqlite+aiosqlite:///{tmp / 'spindle.db'}",
    )
    alice = new_identity(plc)
    with TestKnot(tmp / "knot") as knot:
        git = knot.create_repo(alice.did, "hello")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        async with serve(settings, port) as running:
            await running.register(knot=knot.host, did=alice.did, name="hello")
            yield running, KnotRepo(knot, git, sha, alice)


@pytest.fixture
def spindle(shared: tuple[Spindle, KnotRepo]) -> Spindle:
    return shared[0]


@pytest.fixture
def repo(shared: tuple[Spindle, KnotRepo]) -> KnotRepo:
    shared[1].knot.clear_requests()
    return shared[1]


@pytest.fixture
def alice(repo: KnotRepo) -> Identity:
    return repo.owner


async def test_a_request_without_a_token_is_401_before_any_body_detail(spindle: Spindle):
    response = await spindle.trigger(content=b"{not json", headers={"content-type": "text/plain"})

    assert response.status_code == 401
    assert response.json()["error"] == "AuthenticationRequired"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_rejects_token_whose_lxm_names_another_method(spindle: Spindle, repo: KnotRepo):
    token = repo.owner.token(spindle.settings.did, lxm="sh.tangled.pipeline.cancelPipeline")

    response = await spindle.trigger(repo.body(), token=token)

    assert response.status_code == 401
    assert response.json()["error"] == "BadJwtLexiconMethod"
    assert repo.knot.xrpc_requests() == []


async def test_rejects_token_for_another_service(spindle: Spindle, repo: KnotRepo):
    token = repo.owner.token("did:web:elsewhere.example")

    response = await spindle.trigger(repo.body(), token=token)

    assert response.status_code == 401
    assert response.json()["error"] == "BadJwtAudience"


async def test_rejects_a_replayed_token(spindle: Spindle, repo: KnotRepo):
    token = repo.owner.token(spindle.settings.did)
    first = await spindle.trigger(repo.body(), token=token)

    replayed = await spindle.trigger(repo.body(), token=token)

    assert first.status_code == 200
    assert replayed.status_code == 401


async def test_accepts_a_charset_parameter_on_the_content_type(spindle: Spindle, repo: KnotRepo):
    import json

    response = await spindle.trigger(
        content=json.dumps(repo.body()).encode(),
        by=repo.owner,
        headers={"content-type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("content", "content_type", "fragment"),
    [
        (b'{"knot": "x"}', "text/plain", "Content-Type must be application/json"),
        (b'{"knot": ', "application/json", "not valid JSON"),
        (b'["knot"]', "application/json", "must be a JSON object"),
        (b'{"ref": NaN}', "application/json", "not valid JSON"),
        (b'{"knot": "\xff"}', "application/json", "not UTF-8"),
    ],
    ids=["content-type", "truncated", "array", "nan", "not-utf8"],
)
async def test_rejects_a_body_that_is_not_a_json_object(
    spindle: Spindle, alice: Identity, content: bytes, content_type: str, fragment: str
):
    response = await spindle.trigger(content=content, by=alice, headers={"content-type": content_type})

    assert response.status_code == 400
    assert response.json()["error"] == "InvalidRequest"
    assert fragment in response.json()["message"]


async def test_rejects_a_body_over_64_kib_as_payload_too_large(spindle: Spindle, repo: KnotRepo):
    body = repo.body(padding="x" * (65 * 1024))

    response = await spindle.trigger(body, by=repo.owner)

    assert response.status_code == 413
    assert response.json()["error"] == "PayloadTooLarge"


async def test_counts_a_chunked_body_without_content_length(spindle: Spindle, repo: KnotRepo):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"padding": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    token = repo.owner.token(spindle.settings.did)
    response = await spindle.client.post(
        "/xrpc/com.publicdomainrelay.temp.tangled.spindle.trigger",
        content=chunks(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json()["error"] == "PayloadTooLarge"


REQUIRED = ["knot", "pipelineRkey", "actor", "repoDid", "repoName", "ref"]

BAD_FIELDS: list[tuple[str, Any, str]] = [
    *[(name, None, f"{name} is required") for name in REQUIRED],
    *[(name, 42, f"{name} must be a string") for name in REQUIRED],
    ("actor", "alice.example.com", "actor must be a DID"),
    ("repoDid", "did:plc:", "repoDid must be a DID"),
    ("repoDid", "did:PLC:abc", "repoDid must be a DID"),
    ("knot", "https://knot.example.com", "knot must be a host"),
    ("knot", "knot.example.com/xrpc", "knot must be a host"),
    ("knot", "user@knot.example.com", "knot must be a host"),
    ("knot", "knot .example.com", "knot must be a host"),
    ("knot", "knot.example.com:99999", "knot must be a host"),
    ("knot", "", "knot must be a host"),
    ("ref", "main", "ref must be a full commit id"),
    ("ref", "abc1234", "ref must be a full commit id"),
    ("ref", "a" * 41, "ref must be a full commit id"),
    ("ref", "g" * 40, "ref must be a full commit id"),
    ("repoName", "a/b", "repoName must be"),
    ("repoName", "..", "repoName must be"),
    ("repoName", "", "repoName must be"),
    ("repoName", "x" * 101, "repoName must be"),
    ("pipelineRkey", "..", "pipelineRkey must be a record key"),
    ("pipelineRkey", ".", "pipelineRkey must be a record key"),
    ("pipelineRkey", "a b", "pipelineRkey must be a record key"),
    ("pipelineRkey", "a/b", "pipelineRkey must be a record key"),
    ("pipelineRkey", "", "pipelineRkey must be a record key"),
    ("pipelineRkey", "k" * 513, "pipelineRkey must be a record key"),
    ("inputs", ["a"], "inputs must be an object"),
    ("inputs", "a=b", "inputs must be an object"),
    ("inputs", {"a": 1}, "inputs.a must be a string"),
    ("inputs", {"a": None}, "inputs.a must be a string"),
    ("inputs", {f"k{i}": "v" for i in range(26)}, "at most 25"),
    ("inputs", {"1st": "v"}, "inputs key '1st' must match"),
    ("inputs", {"a.b": "v"}, "inputs key 'a.b' must match"),
    ("inputs", {"k" * 101: "v"}, "longer than 100 characters"),
    ("inputs", {f"k{i}": "v" * 2000 for i in range(10)}, "KiB in total"),
]


@pytest.mark.parametrize(
    ("field", "value", "fragment"), BAD_FIELDS, ids=[f"{f}:{m}" for f, _, m in BAD_FIELDS]
)
async def test_rejects_a_bad_field_naming_it(
    spindle: Spindle, repo: KnotRepo, field: str, value: Any, fragment: str
):
    body = repo.body()
    if value is None:
        del body[field]
    else:
        body[field] = value
    pipelines_before = await spindle.count(Pipeline)

    response = await spindle.trigger(body, by=repo.owner)

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "InvalidRequest"
    assert fragment in response.json()["message"]
    assert repo.knot.xrpc_requests() == []
    assert await spindle.count(Pipeline) == pipelines_before


async def test_checks_the_body_before_authorization(spindle: Spindle, repo: KnotRepo, bob: Identity):
    # bob is not the actor: that is a 403, but the malformed ref is found first.
    response = await spindle.trigger(repo.body(ref="main"), by=bob)

    assert response.status_code == 400
    assert "ref" in response.json()["message"]


async def test_ignores_fields_the_lexicon_does_not_define(spindle: Spindle, repo: KnotRepo):
    response = await spindle.trigger(
        repo.body(comment="open lexicon objects allow extra fields"), by=repo.owner
    )

    assert response.status_code == 200, response.text
