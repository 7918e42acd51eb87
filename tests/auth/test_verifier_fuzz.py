"""Whatever a client sends, the verifier answers with a named 401 or the issuer: never a crash."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auth.verifier import ServiceAuthVerifier
from app.identity.resolver import DidResolver
from app.xrpc.errors import AuthenticationError
from tests.auth.conftest import NSID, SERVICE_DID
from tests.support.keys import SigningKey, b64url

ERRORS = {
    "AuthenticationRequired",
    "BadJwt",
    "BadJwtSignature",
    "JwtExpired",
    "BadJwtAudience",
    "BadJwtLexiconMethod",
}
KEY = SigningKey.generate("ES256K")
# Built once: a TLS context per example would dominate the run time (the PLC here is plain http).
TLS = ssl.create_default_context()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def claim(good: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(good), json_values)


def outcome(plc_url: str, authorization: str | None) -> str:
    """The issuer the verifier returns, or the name of the 401 it raises."""

    async def run() -> str:
        async with httpx.AsyncClient(verify=TLS) as http:
            resolver = DidResolver(http=http, plc_url=plc_url, dev=True)
            verifier = ServiceAuthVerifier(resolver=resolver, service_did=SERVICE_DID)
            try:
                return await verifier.verify(authorization, lxm=NSID)
            except AuthenticationError as exc:
                assert exc.status_code == 401 and exc.error in ERRORS, exc
                assert exc.message
                return exc.error

    return asyncio.run(run())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    authorization=st.one_of(st.none(), st.text(max_size=200), st.text(max_size=200).map("Bearer ".__add__))
)
def test_any_authorization_header_is_answered_with_a_named_401(plc, authorization):
    assert outcome(plc.url, authorization) in ERRORS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_signed_header_and_claims_give_the_issuer_or_a_named_401(plc, data):
    did = plc.register(KEY)
    now = int(time.time())
    header = data.draw(
        st.fixed_dictionaries(
            {"alg": claim("ES256K")}, optional={"typ": claim("JWT"), "kid": claim("#atproto")}
        )
    )
    claims = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "iss": claim(did),
                "aud": claim(SERVICE_DID),
                "exp": claim(now + 60),
                "iat": claim(now),
                "lxm": claim(NSID),
                "jti": claim("fuzz"),
            },
        )
    )
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    token = f"{signing_input}.{b64url(KEY.sign(signing_input.encode()))}"
    assert outcome(plc.url, f"Bearer {token}") in ERRORS | {did}
