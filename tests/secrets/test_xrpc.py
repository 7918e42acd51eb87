"""sh.tangled.repo.{add,remove,list}Secret against real peers: tokens minted by the reference PDS.

The PDS mints each service-auth token (aud = our did:web, lxm = the method) with the account's
key on the dev-env PLC, exactly as Tangled's appview asks it to; our service under uvicorn checks
it and answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.database import create_engine, create_sessionmaker
from app.repos import service as repo_service
from tests.interop.conftest import OWNER_DID
from tests.interop.harness import Account, ReferencePds, Spindle

pytestmark = pytest.mark.pds

ADD = "sh.tangled.repo.addSecret"
REMOVE = "sh.tangled.repo.removeSecret"
LIST = "sh.tangled.repo.listSecrets"
RKEY = "3lsecretsxrpc2"  # a TID: the repo's record key, not its name
VALUE = "v4lue-never-listed-77"


class Client:
    def __init__(self, pds: ReferencePds, spindle: Spindle, repo: str) -> None:
        self.pds = pds
        self.spindle = spindle
        self.repo = repo
        self.http = httpx.Client(base_url=spindle.url, timeout=30)

    def token(self, account: Account, lxm: str) -> dict[str, str]:
        return {"authorization": "Bearer " + self.pds.service_auth(account, aud=self.spindle.did, lxm=lxm)}

    def add(self, account: Account, *, lxm: str = ADD, **body: Any) -> httpx.Response:
        return self.http.post(
            f"/xrpc/{ADD}", json={"repo": self.repo, **body}, headers=self.token(account, lxm)
        )

    def remove(self, account: Account, **body: Any) -> httpx.Response:
        return self.http.post(
            f"/xrpc/{REMOVE}", json={"repo": self.repo, **body}, headers=self.token(account, REMOVE)
        )

    def list(self, account: Account, repo: str | None = None) -> httpx.Response:
        return self.http.get(
            f"/xrpc/{LIST}", params={"repo": repo or self.repo}, headers=self.token(account, LIST)
        )


@pytest.fixture(scope="module")
def accounts(reference_pds: ReferencePds) -> dict[str, Account]:
    return {name: reference_pds.create_account() for name in ("alice", "carol", "mallory")}


@pytest.fixture
def client(reference_pds: ReferencePds, spindle: Spindle, accounts: dict[str, Account]) -> Iterator[Client]:
    alice, carol = accounts["alice"], accounts["carol"]

    async def register() -> None:
        engine = create_engine(spindle.settings.resolved_database_url)
        try:
            async with create_sessionmaker(engine)() as session:
                await repo_service.add(
                    session=session, knot="127.0.0.1:9", did=alice.did, name="site",
                    owner_did=alice.did, collaborators=[carol.did], rkey=RKEY,
                )  # fmt: skip
        finally:
            await engine.dispose()

    import asyncio

    asyncio.run(register())
    client = Client(reference_pds, spindle, f"at://{alice.did}/sh.tangled.repo/{RKEY}")
    yield client
    client.http.close()


def test_owner_adds_lists_and_removes_a_secret_and_values_are_never_listed(
    client: Client, accounts: dict[str, Account]
) -> None:
    alice = accounts["alice"]
    added = client.add(alice, key="DEPLOY_TOKEN", value=VALUE)
    assert added.status_code == 200, added.text
    listed = client.list(alice)
    assert listed.status_code == 200, listed.text
    assert VALUE not in listed.text
    [entry] = listed.json()["secrets"]
    assert entry["repo"] == client.repo and entry["key"] == "DEPLOY_TOKEN"
    assert entry["createdBy"] == alice.did and entry["createdAt"].endswith("Z")
    removed = client.remove(alice, key="DEPLOY_TOKEN")
    assert removed.status_code == 200, removed.text
    assert client.list(alice).json() == {"secrets": []}


def test_adding_a_key_that_exists_is_refused_and_keeps_the_first_value(
    client: Client, accounts: dict[str, Account]
) -> None:
    alice = accounts["alice"]
    assert client.add(alice, key="TOKEN", value=VALUE).status_code == 200
    again = client.add(alice, key="TOKEN", value="another-value")
    assert again.status_code == 400
    assert again.json()["error"] == "KeyAlreadyPresent"
    assert "key already present" in again.json()["message"]


@pytest.mark.parametrize("who", ["alice", "carol", "owner"])
def test_owner_collaborator_and_spindle_owner_may_manage_secrets(
    client: Client,
    accounts: dict[str, Account],
    reference_pds: ReferencePds,
    who: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if who == "owner":
        # The spindle's owner is a configured DID; make it a real account's for this test.
        account = accounts["mallory"]
        monkeypatch.setattr(client.spindle.settings, "owner", account.did)
    else:
        account = accounts[who]
    assert client.add(account, key="BY_" + who.upper(), value=VALUE).status_code == 200
    assert client.list(account).status_code == 200
    assert client.remove(account, key="BY_" + who.upper()).status_code == 200


def test_a_stranger_is_forbidden(client: Client, accounts: dict[str, Account]) -> None:
    mallory = accounts["mallory"]
    assert OWNER_DID != mallory.did
    for response in (
        client.add(mallory, key="X", value=VALUE),
        client.list(mallory),
        client.remove(mallory, key="X"),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "Forbidden"


def test_a_token_for_another_method_is_refused(client: Client, accounts: dict[str, Account]) -> None:
    response = client.add(accounts["alice"], lxm=LIST, key="X", value=VALUE)
    assert response.status_code == 401
    assert response.json()["error"] == "BadJwtLexiconMethod"


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"key": "1BAD", "value": VALUE}, "InvalidRequest", "key:"),
        ({"key": "HAS-DASH", "value": VALUE}, "InvalidRequest", "key:"),
        ({"key": "K" * 51, "value": VALUE}, "InvalidRequest", "key:"),
        ({"key": "EMPTY", "value": ""}, "InvalidRequest", "value: must not be empty"),
        ({"key": "BIG", "value": "x" * 201}, "InvalidRequest", "value: must be at most 200 bytes"),
        ({"key": "NOVALUE"}, "InvalidRequest", "value: is required"),
        (
            {"key": "K", "value": VALUE, "repo": "at://did:plc:nobody/sh.tangled.repo/3lnotserved22"},
            "InvalidRepo",
            "repo:",
        ),
        ({"key": "K", "value": VALUE, "repo": "https://example.com/repo"}, "InvalidRepo", "repo:"),
    ],
)
def test_bad_input_gets_a_clear_error_naming_the_field(
    client: Client, accounts: dict[str, Account], body: dict[str, Any], error: str, field: str
) -> None:
    response = client.add(accounts["alice"], **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert field in response.json()["message"]
    assert VALUE not in response.text


def test_removing_a_key_that_is_not_set_is_not_found(client: Client, accounts: dict[str, Account]) -> None:
    response = client.remove(accounts["alice"], key="NEVER_SET")
    assert response.status_code == 404
    assert response.json()["error"] == "KeyNotFound"


def test_the_repo_is_named_by_its_record_key_not_its_name(
    client: Client, accounts: dict[str, Account]
) -> None:
    alice = accounts["alice"]
    by_name = client.list(alice, repo=f"at://{alice.did}/sh.tangled.repo/site")
    assert by_name.status_code == 400
    assert by_name.json()["error"] == "InvalidRepo"
