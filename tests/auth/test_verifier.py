"""Service-auth JWTs signed with real keys of both curves, issuers resolved over real HTTP."""

from __future__ import annotations

import json
from base64 import urlsafe_b64decode

import pytest

from app.auth import verifier as verifier_module
from app.identity.keys import CURVE_ORDERS, ES256, ES256K
from app.xrpc.errors import AuthenticationError
from tests.auth.conftest import NSID, SERVICE_DID
from tests.support.clock import ManualClock
from tests.support.keys import SigningKey, b64url, mint


@pytest.fixture(params=[ES256K, ES256])
def alg(request):
    return request.param


@pytest.fixture
def key(alg):
    return SigningKey.generate(alg)


@pytest.fixture
def iss(plc, key):
    return plc.register(key)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def token_for(key: SigningKey, iss: str, **kwargs) -> str:
    kwargs.setdefault("aud", SERVICE_DID)
    kwargs.setdefault("lxm", NSID)
    return mint(key, iss=iss, **kwargs)


def signed(key: SigningKey, header: str, payload: str) -> str:
    """A token from raw JSON text, for shapes `mint` cannot produce."""
    signing_input = f"{b64url(header.encode())}.{b64url(payload.encode())}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


async def rejection(verifier, authorization: str | None, *, lxm: str = NSID) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        await verifier.verify(authorization, lxm=lxm)
    assert info.value.status_code == 401
    assert info.value.headers() == {"WWW-Authenticate": "Bearer"}
    return info.value


# Accepted


async def test_accepts_a_token_minted_by_the_issuers_pds_and_returns_the_issuer(verifier, key, iss):
    assert await verifier.verify(bearer(token_for(key, iss)), lxm=NSID) == iss


async def test_accepts_the_audience_naming_the_tangled_spindle_service(verifier, key, iss):
    token = token_for(key, iss, aud=f"{SERVICE_DID}#tangled_spindle")
    assert await verifier.verify(bearer(token), lxm=NSID) == iss


async def test_accepts_kid_atproto(verifier, key, iss):
    token = token_for(key, iss, header={"kid": "#atproto"})
    assert await verifier.verify(bearer(token), lxm=NSID) == iss


async def test_accepts_a_token_without_typ(verifier, key, iss):
    token = token_for(key, iss, drop=("typ",))
    assert await verifier.verify(bearer(token), lxm=NSID) == iss


async def test_accepts_an_issuer_whose_document_uses_a_legacy_key_type(verifier, plc, key):
    did = plc.register(key, legacy=True)
    assert await verifier.verify(bearer(token_for(key, did)), lxm=NSID) == did


async def test_accepts_a_did_web_issuer(verifier, did_web_host, key):
    did = did_web_host.serve(key)
    assert await verifier.verify(bearer(token_for(key, did)), lxm=NSID) == did


async def test_accepts_exp_and_iat_within_five_seconds_of_clock_skew(verifier, key, iss, clock):
    now = int(clock.now)
    token = token_for(key, iss, iat=now + 4, exp=now - 4)
    assert await verifier.verify(bearer(token), lxm=NSID) == iss


async def test_accepts_a_token_valid_for_a_whole_hour(verifier, key, iss, clock):
    now = int(clock.now)
    assert await verifier.verify(bearer(token_for(key, iss, iat=now, exp=now + 3600)), lxm=NSID) == iss


# The Authorization header


async def test_rejects_a_request_without_authorization(verifier):
    error = await rejection(verifier, None)
    assert error.error == "AuthenticationRequired"
    assert "Bearer" in error.message


@pytest.mark.parametrize("header", ["", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "DPoP abc.def.ghi"])
async def test_rejects_an_authorization_that_is_not_a_bearer_token(verifier, header):
    assert (await rejection(verifier, header)).error == "AuthenticationRequired"


# Format


@pytest.mark.parametrize("shape", ["{h}.{p}", "{h}.{p}.{s}.{s}", "{h}..{s}", "{h}.{p}.", ".{p}.{s}"])
async def test_rejects_a_token_that_is_not_three_segments(verifier, key, iss, shape):
    h, p, s = token_for(key, iss).split(".")
    error = await rejection(verifier, bearer(shape.format(h=h, p=p, s=s)))
    assert error.error == "BadJwt"
    assert "three base64url segments" in error.message


@pytest.mark.parametrize("bad", ["+", "/", "=", "!", " ", "%2E"])
async def test_rejects_characters_outside_base64url(verifier, key, iss, bad):
    h, p, s = token_for(key, iss).split(".")
    error = await rejection(verifier, bearer(f"{h}.{p[:10]}{bad}{p[10:]}.{s}"))
    assert error.error == "BadJwt"


async def test_rejects_padded_base64(verifier, key, iss):
    h, p, s = token_for(key, iss).split(".")
    padded = p + "=" * (-len(p) % 4 or 4)
    assert (await rejection(verifier, bearer(f"{h}.{padded}.{s}"))).error == "BadJwt"


async def test_rejects_a_non_canonical_spelling_of_the_signature(verifier, key, iss):
    """86 characters carry 64 bytes plus 4 spare bits; setting a spare bit spells the same bytes."""
    h, p, s = token_for(key, iss).split(".")
    assert len(s) == 86
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = s[:-1] + alphabet[alphabet.index(s[-1]) | 1]
    error = await rejection(verifier, bearer(f"{h}.{p}.{respelled}"))
    assert error.error == "BadJwt"
    assert "not canonical base64url" in error.message


async def test_rejects_a_segment_whose_length_cannot_be_base64(verifier, key, iss):
    h, p, s = token_for(key, iss).split(".")
    cut = p[: (len(p) // 4) * 4 - 3]
    assert len(cut) % 4 == 1
    assert (await rejection(verifier, bearer(f"{h}.{cut}.{s}"))).error == "BadJwt"


async def test_rejects_a_header_that_is_not_json(verifier, key, iss):
    error = await rejection(verifier, bearer(signed(key, "not json", json.dumps({"iss": iss}))))
    assert (error.error, error.message) == ("BadJwt", "the JWT header is not JSON")


async def test_rejects_a_payload_that_is_not_a_json_object(verifier, key, iss):
    header = json.dumps({"alg": key.alg})
    error = await rejection(verifier, bearer(signed(key, header, json.dumps([iss]))))
    assert (error.error, error.message) == ("BadJwt", "the JWT payload is not a JSON object")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_rejects_non_finite_numbers_in_the_payload(verifier, key, iss, constant):
    claims = json.dumps({"iss": iss, "aud": SERVICE_DID, "lxm": NSID, "jti": "j", "iat": 1})
    payload = claims[:-1] + f', "exp": {constant}}}'
    error = await rejection(verifier, bearer(signed(key, json.dumps({"alg": key.alg}), payload)))
    assert (error.error, error.message) == ("BadJwt", "the JWT payload is not JSON")


async def test_rejects_an_oversized_token_before_decoding_it(verifier, key, iss):
    token = token_for(key, iss, claims={"padding": "x" * 9000})
    error = await rejection(verifier, bearer(token))
    assert error.error == "BadJwt"
    assert "longer than 8192" in error.message


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none"},
        {"alg": "HS256"},
        {"alg": "RS256"},
        {"alg": "es256k"},
        {"alg": ["ES256K"]},
        {"alg": {}},
    ],
)
async def test_rejects_an_unsupported_alg(verifier, key, iss, header):
    error = await rejection(verifier, bearer(token_for(key, iss, header=header)))
    assert error.error == "BadJwt"
    assert "is not supported: use ES256K or ES256" in error.message


async def test_rejects_a_header_without_alg(verifier, key, iss):
    error = await rejection(verifier, bearer(token_for(key, iss, drop=("alg",))))
    assert error.error == "BadJwt"


@pytest.mark.parametrize("kid", ["#other", "did:key:zQ3sh", "atproto"])
async def test_rejects_a_kid_other_than_atproto(verifier, key, iss, kid):
    error = await rejection(verifier, bearer(token_for(key, iss, header={"kid": kid})))
    assert error.error == "BadJwt"
    assert "is not #atproto" in error.message


@pytest.mark.parametrize("length", [1, 32, 63])
async def test_rejects_a_truncated_signature(verifier, key, iss, length):
    h, p, s = token_for(key, iss).split(".")
    raw = urlsafe_b64decode(s + "==")[:length]
    error = await rejection(verifier, bearer(f"{h}.{p}.{b64url(raw)}"))
    assert (error.error, error.message) == (
        "BadJwtSignature",
        f"the signature must be 64 bytes (r‖s), got {length}",
    )


async def test_rejects_an_oversized_signature_such_as_der(verifier, key, iss):
    h, p, s = token_for(key, iss).split(".")
    raw = urlsafe_b64decode(s + "==")
    for extra in (raw + b"\0", b"\x30\x44\x02\x20" + raw[:32] + b"\x02\x20" + raw[32:]):
        error = await rejection(verifier, bearer(f"{h}.{p}.{b64url(extra)}"))
        assert (error.error, error.message) == (
            "BadJwtSignature",
            f"the signature must be 64 bytes (r‖s), got {len(extra)}",
        )


async def test_rejects_a_high_s_signature(verifier, key, iss, alg, plc):
    token = token_for(key, iss, low_s=False)
    s = int.from_bytes(urlsafe_b64decode(token.split(".")[2] + "==")[32:], "big")
    assert s > CURVE_ORDERS[alg] // 2
    error = await rejection(verifier, bearer(token))
    assert (error.error, error.message) == (
        "BadJwtSignature",
        "the signature is not canonical: atproto requires low-S r‖s",
    )
    assert plc.requests[iss] == 0, "rejected before resolving the issuer"


# typ


@pytest.mark.parametrize("typ", ["at+jwt", "refresh+jwt", "dpop+jwt", "AT+JWT", "application/at+jwt"])
async def test_rejects_access_refresh_and_dpop_token_types(verifier, key, iss, typ):
    error = await rejection(verifier, bearer(token_for(key, iss, header={"typ": typ})))
    assert (error.error, error.message) == ("BadJwt", f"a {typ} token is not a service-auth token")


async def test_a_header_accepted_before_lets_no_other_header_through(verifier, key, iss):
    # Accepted headers are remembered by their exact text: any other one is checked afresh.
    assert await verifier.verify(bearer(token_for(key, iss)), lxm=NSID) == iss
    assert await verifier.verify(bearer(token_for(key, iss)), lxm=NSID) == iss

    error = await rejection(verifier, bearer(token_for(key, iss, header={"typ": "at+jwt"})))

    assert (error.error, error.message) == ("BadJwt", "a at+jwt token is not a service-auth token")


async def test_remembered_headers_are_bounded(verifier, key, iss, monkeypatch):
    monkeypatch.setattr(verifier_module, "MAX_CACHED_HEADERS", 4)
    for i in range(10):  # ten distinct accepted headers
        assert await verifier.verify(bearer(token_for(key, iss, header={"x": i})), lxm=NSID) == iss
        assert len(verifier._headers) <= 4


async def test_rejects_a_typ_that_is_not_a_string(verifier, key, iss):
    error = await rejection(verifier, bearer(token_for(key, iss, header={"typ": ["JWT"]})))
    assert (error.error, error.message) == ("BadJwt", "the JWT typ must be a string")


# exp and iat


@pytest.mark.parametrize("claim", ["exp", "iat"])
async def test_rejects_a_token_without_exp_or_iat(verifier, key, iss, claim):
    error = await rejection(verifier, bearer(token_for(key, iss, drop=(claim,))))
    assert error.error == "BadJwt"
    assert f"has no {claim}" in error.message


@pytest.mark.parametrize("value", ["1700000000", True, None, [1]])
async def test_rejects_exp_that_is_not_a_number(verifier, key, iss, value):
    token = token_for(key, iss, claims={"exp": value})
    error = await rejection(verifier, bearer(token))
    assert error.error == "BadJwt"


async def test_rejects_an_expired_token(verifier, key, iss, clock):
    now = int(clock.now)
    error = await rejection(verifier, bearer(token_for(key, iss, iat=now - 70, exp=now - 6)))
    assert (error.error, error.message) == ("JwtExpired", "the JWT has expired")


async def test_rejects_a_token_that_expires_more_than_an_hour_ahead(verifier, key, iss, clock):
    now = int(clock.now)
    error = await rejection(verifier, bearer(token_for(key, iss, iat=now, exp=now + 3600 + 6)))
    assert (error.error, error.message) == ("BadJwt", "the JWT exp is more than 1 hour ahead")


async def test_rejects_a_token_issued_in_the_future(verifier, key, iss, clock):
    now = int(clock.now)
    error = await rejection(verifier, bearer(token_for(key, iss, iat=now + 6, exp=now + 60)))
    assert (error.error, error.message) == ("BadJwt", "the JWT iat is in the future")


async def test_rejects_a_token_issued_more_than_an_hour_ago(verifier, key, iss, clock):
    now = int(clock.now)
    error = await rejection(verifier, bearer(token_for(key, iss, iat=now - 3600 - 6, exp=now + 30)))
    assert (error.error, error.message) == ("BadJwt", "the JWT iat is more than 1 hour in the past")


# aud


@pytest.mark.parametrize(
    "aud",
    [
        "did:web:other.example",
        f"{SERVICE_DID}#atproto_labeler",
        f"{SERVICE_DID}#",
        "did:web:spindle.test.evil",
        [SERVICE_DID],
    ],
)
async def test_rejects_a_token_for_another_audience(verifier, key, iss, aud):
    error = await rejection(verifier, bearer(token_for(key, iss, aud=aud)))
    assert error.error == "BadJwtAudience"
    assert f"must be {SERVICE_DID}" in error.message


async def test_rejects_a_token_without_aud(verifier, key, iss):
    error = await rejection(verifier, bearer(token_for(key, iss, drop=("aud",))))
    assert error.error == "BadJwtAudience"


# lxm


async def test_rejects_token_whose_lxm_names_another_method(verifier, key, iss):
    token = token_for(key, iss, lxm="sh.tangled.pipeline.cancelPipeline")
    error = await rejection(verifier, bearer(token))
    assert error.error == "BadJwtLexiconMethod"
    assert "'sh.tangled.pipeline.cancelPipeline' is not " + NSID in error.message


async def test_rejects_a_token_without_lxm(verifier, key, iss):
    error = await rejection(verifier, bearer(token_for(key, iss, lxm=None)))
    assert (error.error, error.message) == ("BadJwtLexiconMethod", f"the JWT has no lxm: it must be {NSID}")


# iss


async def test_rejects_an_iss_with_a_fragment(verifier, key, iss):
    error = await rejection(verifier, bearer(token_for(key, f"{iss}#atproto")))
    assert (error.error, error.message) == ("BadJwt", "the JWT iss must be a DID without a #fragment")


@pytest.mark.parametrize("value", ["alice.bsky.social", "did:plc:", "DID:PLC:abc", 42])
async def test_rejects_an_iss_that_is_not_a_did(verifier, key, value):
    error = await rejection(verifier, bearer(token_for(key, "placeholder", claims={"iss": value})))
    assert error.error == "BadJwt"


async def test_rejects_a_token_without_iss(verifier, key, iss):
    error = await rejection(verifier, bearer(token_for(key, iss, drop=("iss",))))
    assert (error.error, error.message) == ("BadJwt", "the JWT has no iss")


async def test_rejects_an_issuer_that_cannot_be_resolved(verifier, key):
    did = "did:plc:" + "z" * 24
    error = await rejection(verifier, bearer(token_for(key, did)))
    assert error.error == "BadJwt"
    assert error.message == f"could not resolve the JWT issuer {did}: the PLC directory answered HTTP 404"


async def test_rejects_an_issuer_whose_directory_is_down_with_a_401_not_a_500(verifier, plc, key, iss):
    plc.down = True
    try:
        error = await rejection(verifier, bearer(token_for(key, iss)))
    finally:
        plc.down = False
    assert error.error == "BadJwt"
    assert error.message.startswith(f"could not resolve the JWT issuer {iss}")


async def test_rejects_a_did_key_issuer(verifier, key):
    error = await rejection(verifier, bearer(token_for(key, key.did_key)))
    assert error.error == "BadJwt"
    assert "only did:plc and did:web" in error.message


async def test_rejects_an_issuer_whose_document_has_no_atproto_key(verifier, plc, key, iss):
    plc.documents[iss]["verificationMethod"] = []
    error = await rejection(verifier, bearer(token_for(key, iss)))
    assert error.error == "BadJwt"
    assert "has no usable signing key: it has no #atproto verification method" in error.message


async def test_a_cached_document_without_a_key_is_re_resolved_once(verifier, plc, key, iss):
    plc.documents[iss]["verificationMethod"] = []
    assert (await verifier.resolver.resolve(iss)).key is None
    plc.register(key, did=iss)
    assert await verifier.verify(bearer(token_for(key, iss)), lxm=NSID) == iss
    assert plc.requests[iss] == 2


# jti and replays


@pytest.mark.parametrize("claims", [{"jti": None}, {"jti": 12345}, {"jti": ""}, {"jti": "j" * 257}])
async def test_rejects_a_missing_or_malformed_jti(verifier, key, iss, claims):
    error = await rejection(verifier, bearer(token_for(key, iss, claims=claims)))
    assert error.error == "BadJwt"
    assert "jti must be a string of 1 to 256 characters" in error.message


async def test_rejects_a_replayed_token(verifier, key, iss):
    token = token_for(key, iss)
    assert await verifier.verify(bearer(token), lxm=NSID) == iss
    error = await rejection(verifier, bearer(token))
    assert error.error == "BadJwt"
    assert error.message.startswith("token replayed")


async def test_rejects_a_new_token_reusing_a_jti_of_the_same_issuer(verifier, key, iss):
    await verifier.verify(bearer(token_for(key, iss, jti="once")), lxm=NSID)
    error = await rejection(
        verifier, bearer(token_for(key, iss, jti="once", exp=int(verifier._clock()) + 90))
    )
    assert error.message.startswith("token replayed")


async def test_the_same_jti_from_another_issuer_is_accepted(verifier, plc, key, iss):
    other_key = SigningKey.generate(key.alg)
    other = plc.register(other_key)
    await verifier.verify(bearer(token_for(key, iss, jti="shared")), lxm=NSID)
    assert await verifier.verify(bearer(token_for(other_key, other, jti="shared")), lxm=NSID) == other


async def test_a_jti_may_be_used_again_once_its_token_has_expired(verifier, key, iss, clock):
    now = int(clock.now)
    await verifier.verify(bearer(token_for(key, iss, jti="later", iat=now, exp=now + 60)), lxm=NSID)
    clock.advance(120)
    later = int(clock.now)
    token = token_for(key, iss, jti="later", iat=later, exp=later + 60)
    assert await verifier.verify(bearer(token), lxm=NSID) == iss


async def test_a_forged_token_does_not_burn_the_jti_of_the_genuine_one(verifier, key, iss):
    forger = SigningKey.generate(key.alg)
    forged = token_for(forger, iss, jti="victim-jti")
    assert (await rejection(verifier, bearer(forged))).error == "BadJwtSignature"
    assert await verifier.verify(bearer(token_for(key, iss, jti="victim-jti")), lxm=NSID) == iss


# Signature


async def test_rejects_a_token_signed_by_another_key(verifier, key, iss):
    forger = SigningKey.generate(key.alg)
    error = await rejection(verifier, bearer(token_for(forger, iss)))
    assert (error.error, error.message) == (
        "BadJwtSignature",
        f"the JWT signature does not verify with the #atproto key of {iss}",
    )


async def test_rejects_a_payload_changed_after_signing(verifier, key, iss):
    h, p, s = token_for(key, iss).split(".")
    _, other_p, _ = token_for(key, iss, claims={"extra": 1}).split(".")
    assert (await rejection(verifier, bearer(f"{h}.{other_p}.{s}"))).error == "BadJwtSignature"


async def test_rejects_an_alg_that_does_not_match_the_curve_of_the_issuers_key(verifier, plc):
    k_key = SigningKey.generate(ES256K)
    did = plc.register(k_key)
    p_key = SigningKey.generate(ES256)
    error = await rejection(verifier, bearer(token_for(p_key, did)))
    assert (error.error, error.message) == (
        "BadJwtSignature",
        f"the JWT alg ES256 does not match the ES256K #atproto key of {did}",
    )


async def test_rejects_a_secp256k1_signature_labelled_es256(verifier, plc):
    """Same key bytes, other label: the header alg must name the curve the key is on."""
    k_key = SigningKey.generate(ES256K)
    did = plc.register(k_key)
    h, p, s = token_for(k_key, did).split(".")
    relabelled_h = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}).encode())
    signing_input = f"{relabelled_h}.{p}".encode()
    token = f"{relabelled_h}.{p}.{b64url(k_key.sign(signing_input))}"
    error = await rejection(verifier, bearer(token))
    assert (error.error, error.message) == (
        "BadJwtSignature",
        f"the JWT alg ES256 does not match the ES256K #atproto key of {did}",
    )


# Key rotation and directory outages


async def test_a_rotated_key_is_picked_up_by_re_resolving_the_issuer_once(verifier, plc, key, iss):
    await verifier.verify(bearer(token_for(key, iss)), lxm=NSID)
    assert plc.requests[iss] == 1
    rotated = SigningKey.generate(key.alg)
    plc.register(rotated, did=iss)
    assert await verifier.verify(bearer(token_for(rotated, iss)), lxm=NSID) == iss
    assert plc.requests[iss] == 2
    assert await verifier.verify(bearer(token_for(rotated, iss)), lxm=NSID) == iss
    assert plc.requests[iss] == 2


async def test_a_rotation_to_the_other_curve_is_picked_up_too(verifier, plc, key, iss):
    await verifier.verify(bearer(token_for(key, iss)), lxm=NSID)
    rotated = SigningKey.generate(ES256 if key.alg == ES256K else ES256K)
    plc.register(rotated, did=iss)
    assert await verifier.verify(bearer(token_for(rotated, iss)), lxm=NSID) == iss


async def test_bad_signatures_re_resolve_the_issuer_at_most_once_per_ten_seconds(
    make_resolver, make_verifier, plc, key, iss
):
    monotonic = ManualClock(start=1000.0)
    verifier = make_verifier(make_resolver(clock=monotonic))
    forger = SigningKey.generate(key.alg)
    await verifier.verify(bearer(token_for(key, iss)), lxm=NSID)
    for _ in range(5):
        assert (await rejection(verifier, bearer(token_for(forger, iss)))).error == "BadJwtSignature"
    assert plc.requests[iss] == 2, "one fetch, then one forced re-resolution for five bad tokens"
    monotonic.advance(10)
    await rejection(verifier, bearer(token_for(forger, iss)))
    assert plc.requests[iss] == 3


async def test_a_cached_document_keeps_verifying_while_the_plc_directory_is_down(
    make_resolver, make_verifier, plc, key, iss
):
    monotonic = ManualClock(start=1000.0)
    verifier = make_verifier(make_resolver(clock=monotonic, fresh_ttl=60))
    await verifier.verify(bearer(token_for(key, iss)), lxm=NSID)
    plc.down = True
    try:
        monotonic.advance(3600)
        assert await verifier.verify(bearer(token_for(key, iss)), lxm=NSID) == iss
        assert plc.requests[iss] == 2, "the stale document was refreshed, which failed"
    finally:
        plc.down = False
