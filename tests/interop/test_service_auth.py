"""Tokens minted by the reference PDS (com.atproto.server.getServiceAuth) against our verifier.

The keys, the DID documents and the JWTs all come from @atproto/dev-env: a real PDS signing with
its secp256k1 account keys and a real PLC directory serving the documents.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from app.auth.verifier import ServiceAuthVerifier
from app.identity.resolver import DidResolver
from app.xrpc.errors import AuthenticationError
from tests.interop.harness import Account, PdsError, ReferencePds

pytestmark = pytest.mark.pds

TRIGGER = "com.publicdomainrelay.temp.tangled.spindle.trigger"
CANCEL = "sh.tangled.pipeline.cancelPipeline"
SERVICE_DID = "did:web:localhost%3A6555"


@pytest.fixture
async def verifier(reference_pds: ReferencePds) -> AsyncIterator[ServiceAuthVerifier]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        resolver = DidResolver(http=http, plc_url=reference_pds.plc_url, dev=True)
        yield ServiceAuthVerifier(resolver=resolver, service_did=SERVICE_DID)


@pytest.fixture(scope="module")
def alice(reference_pds: ReferencePds) -> Account:
    return reference_pds.create_account()


async def test_resolves_an_account_did_on_the_reference_plc_to_its_atproto_key(
    reference_pds: ReferencePds, alice: Account
) -> None:
    async with httpx.AsyncClient(timeout=10.0) as http:
        document = await DidResolver(http=http, plc_url=reference_pds.plc_url, dev=True).resolve(alice.did)
    assert document.did == alice.did
    assert document.key is not None, document.key_problem
    assert f"at://{alice.handle}" in document.raw["alsoKnownAs"]


async def test_accepts_token_minted_by_the_reference_pds_for_the_trigger_method(
    reference_pds: ReferencePds, verifier: ServiceAuthVerifier, alice: Account
) -> None:
    token = reference_pds.service_auth(alice, aud=SERVICE_DID, lxm=TRIGGER)
    assert await verifier.verify("Bearer " + token, lxm=TRIGGER) == alice.did


async def test_accepts_token_the_reference_pds_minted_for_up_to_an_hour(
    reference_pds: ReferencePds, verifier: ServiceAuthVerifier, alice: Account
) -> None:
    token = reference_pds.service_auth(alice, aud=SERVICE_DID, lxm=TRIGGER, exp=int(time.time()) + 3540)
    assert await verifier.verify("Bearer " + token, lxm=TRIGGER) == alice.did


async def test_rejects_token_whose_lxm_names_another_method(
    reference_pds: ReferencePds, verifier: ServiceAuthVerifier, alice: Account
) -> None:
    token = reference_pds.service_auth(alice, aud=SERVICE_DID, lxm=CANCEL)
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify("Bearer " + token, lxm=TRIGGER)
    assert caught.value.error == "BadJwtLexiconMethod"


async def test_rejects_method_less_token_from_the_reference_pds(
    reference_pds: ReferencePds, verifier: ServiceAuthVerifier, alice: Account
) -> None:
    token = reference_pds.service_auth(alice, aud=SERVICE_DID)
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify("Bearer " + token, lxm=TRIGGER)
    assert caught.value.error == "BadJwtLexiconMethod"


async def test_rejects_token_the_reference_pds_minted_for_another_service(
    reference_pds: ReferencePds, verifier: ServiceAuthVerifier, alice: Account
) -> None:
    token = reference_pds.service_auth(alice, aud="did:web:other.example", lxm=TRIGGER)
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify("Bearer " + token, lxm=TRIGGER)
    assert caught.value.error == "BadJwtAudience"


async def test_rejects_a_reference_pds_token_presented_twice(
    reference_pds: ReferencePds, verifier: ServiceAuthVerifier, alice: Account
) -> None:
    token = reference_pds.service_auth(alice, aud=SERVICE_DID, lxm=TRIGGER)
    assert await verifier.verify("Bearer " + token, lxm=TRIGGER) == alice.did
    with pytest.raises(AuthenticationError):
        await verifier.verify("Bearer " + token, lxm=TRIGGER)


async def test_rejects_token_whose_signature_was_made_by_another_account(
    reference_pds: ReferencePds, verifier: ServiceAuthVerifier, alice: Account
) -> None:
    # Bob's genuine signature over a payload naming Alice: only Alice's key may vouch for Alice.
    bob = reference_pds.create_account()
    alices = reference_pds.service_auth(alice, aud=SERVICE_DID, lxm=TRIGGER).split(".")
    bobs = reference_pds.service_auth(bob, aud=SERVICE_DID, lxm=TRIGGER).split(".")
    forged = ".".join([alices[0], alices[1], bobs[2]])
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify("Bearer " + forged, lxm=TRIGGER)
    assert caught.value.error == "BadJwtSignature"


def test_reference_pds_refuses_to_mint_a_token_valid_for_more_than_an_hour(
    reference_pds: ReferencePds, alice: Account
) -> None:
    # The verifier's 1 h ceiling on `exp` matches what a PDS will issue at all.
    with pytest.raises(PdsError) as caught:
        reference_pds.service_auth(alice, aud=SERVICE_DID, lxm=TRIGGER, exp=int(time.time()) + 7200)
    assert (caught.value.status, caught.value.error) == (400, "BadExpiration")


async def test_rejects_the_accounts_own_pds_session_token(
    verifier: ServiceAuthVerifier, alice: Account
) -> None:
    # A session (access) token is for the PDS alone; whoever holds one must not act as the user here.
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify("Bearer " + alice.access_jwt, lxm=TRIGGER)
    assert caught.value.error == "BadJwt"
