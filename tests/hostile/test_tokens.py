"""Forged and malformed service-auth tokens against the real trigger route, one broken part at a time.

tests/auth checks the verifier's reasons one by one; here every case goes through HTTP to the
route a PDS calls, with a valid body for a registered repo, so the only thing wrong is the token.
Pass: 401 with the right error name and `WWW-Authenticate: Bearer`, nothing recorded, the knot
never asked.
"""

from __future__ import annotations

import json
import time
from base64 import urlsafe_b64decode
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from app.runs.schemas import TRIGGER_NSID
from tests.hostile.conftest import Hostile, assert_xrpc_error
from tests.support.keys import SigningKey, b64url, mint

pytestmark = pytest.mark.asyncio(loop_scope="module")

STRANGER = SigningKey.generate("ES256K")


@dataclass
class Forge:
    """Builds Authorization headers from alice's real key, broken in the way a case asks."""

    hostile: Hostile

    @property
    def aud(self) -> str:
        return self.hostile.spindle.settings.did

    def token(self, *, key: SigningKey | None = None, iss: str | None = None, **kwargs: Any) -> str:
        kwargs.setdefault("aud", self.aud)
        kwargs.setdefault("lxm", TRIGGER_NSID)
        alice = self.hostile.alice
        return mint(key or alice.key, iss=iss or alice.did, **kwargs)

    def raw(self, header: str | bytes, payload: str | bytes, *, key: SigningKey | None = None) -> str:
        """A token from raw header and payload bytes, signed with alice's key."""
        h = b64url(header.encode() if isinstance(header, str) else header)
        p = b64url(payload.encode() if isinstance(payload, str) else payload)
        signing_input = f"{h}.{p}"
        return f"{signing_input}.{b64url((key or self.hostile.alice.key).sign(signing_input.encode()))}"

    def payload(self, **changes: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.hostile.alice.did,
            "aud": self.aud,
            "lxm": TRIGGER_NSID,
            "iat": now,
            "exp": now + 60,
            "jti": f"jti-{time.monotonic_ns()}",
        }
        claims.update(changes)
        return json.dumps(claims)

    def with_signature(self, token: str, signature: bytes) -> str:
        head, body, _ = token.split(".")
        return f"{head}.{body}.{b64url(signature)}"

    def signature(self, token: str) -> bytes:
        return urlsafe_b64decode(token.split(".")[2] + "==")


Build = Callable[[Forge], str | None]


def bearer(make: Callable[[Forge], str]) -> Build:
    return lambda f: f"Bearer {make(f)}"


def now() -> int:
    return int(time.time())


# (case id, Authorization header builder, error name)
CASES: list[tuple[str, Build, str]] = [
    # -- the Authorization header itself
    ("no-authorization-header", lambda f: None, "AuthenticationRequired"),
    ("empty-authorization-header", lambda f: "", "AuthenticationRequired"),
    ("bearer-without-token", lambda f: "Bearer", "AuthenticationRequired"),
    ("token-without-bearer", lambda f: f.token(), "AuthenticationRequired"),
    ("basic-scheme", lambda f: "Basic YWxpY2U6c2VjcmV0", "AuthenticationRequired"),
    ("dpop-scheme", lambda f: f"DPoP {f.token()}", "AuthenticationRequired"),
    ("tab-after-bearer", lambda f: f"Bearer\t{f.token()}", "AuthenticationRequired"),
    ("empty-token-segments", bearer(lambda f: ".."), "BadJwt"),
    ("oversized-token", bearer(lambda f: f.token(claims={"pad": "x" * 9000})), "BadJwt"),
    # -- shape: segments and base64url
    ("one-segment", bearer(lambda f: f.token().split(".")[0]), "BadJwt"),
    ("two-segments", bearer(lambda f: ".".join(f.token().split(".")[:2])), "BadJwt"),
    ("four-segments", bearer(lambda f: f.token() + ".AAAA"), "BadJwt"),
    ("five-segments-jwe", bearer(lambda f: f.token() + ".AAAA.BBBB"), "BadJwt"),
    ("plus-in-signature", bearer(lambda f: f.token()[:-2] + "+A"), "BadJwt"),
    ("slash-in-payload", bearer(lambda f: f.token().replace(".", "./", 1)), "BadJwt"),
    ("padding", bearer(lambda f: f.token() + "=="), "BadJwt"),
    ("space-inside", bearer(lambda f: f.token().replace(".", ". ", 1)), "BadJwt"),
    ("non-ascii", bearer(lambda f: f.token().replace(".", ".é", 1)), "BadJwt"),
    ("header-not-json", bearer(lambda f: f.raw("{alg: ES256K", f.payload())), "BadJwt"),
    ("header-json-array", bearer(lambda f: f.raw('["ES256K"]', f.payload())), "BadJwt"),
    ("payload-json-null", bearer(lambda f: f.raw('{"alg":"ES256K"}', "null")), "BadJwt"),
    ("payload-not-utf8", bearer(lambda f: f.raw('{"alg":"ES256K"}', b'{"iss":"\xff"}')), "BadJwt"),
    ("payload-nan-exp", bearer(lambda f: f.raw('{"alg":"ES256K"}', f.payload(exp=float("nan")))), "BadJwt"),
    ("payload-deeply-nested", bearer(lambda f: f.raw('{"alg":"ES256K"}', "[" * 3000 + "]" * 3000)), "BadJwt"),
    # -- header: alg, typ, kid
    ("alg-none", bearer(lambda f: f.token(header={"alg": "none"})), "BadJwt"),
    ("alg-hs256", bearer(lambda f: f.token(header={"alg": "HS256"})), "BadJwt"),
    ("alg-rs256", bearer(lambda f: f.token(header={"alg": "RS256"})), "BadJwt"),
    ("alg-missing", bearer(lambda f: f.token(drop=("alg",))), "BadJwt"),
    ("alg-lowercase", bearer(lambda f: f.token(header={"alg": "es256k"})), "BadJwt"),
    ("alg-array", bearer(lambda f: f.token(header={"alg": ["ES256K"]})), "BadJwt"),
    ("alg-es256-over-secp256k1-key", bearer(lambda f: f.token(header={"alg": "ES256"})), "BadJwtSignature"),
    (
        "alg-es256k-over-p256-key",
        bearer(
            lambda f: mint(
                f.hostile.bob.key,
                iss=f.hostile.alice.did,
                aud=f.aud,
                lxm=TRIGGER_NSID,
                header={"alg": "ES256K"},
            )
        ),
        "BadJwtSignature",
    ),
    ("typ-at+jwt", bearer(lambda f: f.token(header={"typ": "at+jwt"})), "BadJwt"),
    ("typ-refresh+jwt", bearer(lambda f: f.token(header={"typ": "refresh+jwt"})), "BadJwt"),
    ("typ-dpop+jwt", bearer(lambda f: f.token(header={"typ": "dpop+jwt"})), "BadJwt"),
    (
        "typ-application-at+jwt-uppercase",
        bearer(lambda f: f.token(header={"typ": "application/AT+JWT"})),
        "BadJwt",
    ),
    ("typ-number", bearer(lambda f: f.token(header={"typ": 1})), "BadJwt"),
    ("kid-other", bearer(lambda f: f.token(header={"kid": "#other"})), "BadJwt"),
    (
        "kid-full-did-url",
        bearer(lambda f: f.token(header={"kid": f"{f.hostile.alice.did}#atproto"})),
        "BadJwt",
    ),
    # -- iss
    ("iss-missing", bearer(lambda f: f.token(drop=("iss",))), "BadJwt"),
    ("iss-handle", bearer(lambda f: f.token(claims={"iss": "alice.example.com"})), "BadJwt"),
    ("iss-number", bearer(lambda f: f.token(claims={"iss": 42})), "BadJwt"),
    ("iss-with-fragment", bearer(lambda f: f.token(iss=f.hostile.alice.did + "#atproto")), "BadJwt"),
    ("iss-with-trailing-newline", bearer(lambda f: f.token(iss=f.hostile.alice.did + "\n")), "BadJwt"),
    ("iss-with-query", bearer(lambda f: f.token(iss=f.hostile.alice.did + "?x=1")), "BadJwt"),
    ("iss-did-key", bearer(lambda f: f.token(iss=f.hostile.alice.key.did_key)), "BadJwt"),
    ("iss-plc-uppercase", bearer(lambda f: f.token(iss=f.hostile.alice.did.upper())), "BadJwt"),
    ("iss-unregistered-plc", bearer(lambda f: f.token(iss="did:plc:nobodyhomeaaaaaaaaaaaaaa")), "BadJwt"),
    ("iss-did-web-with-path", bearer(lambda f: f.token(iss="did:web:example.com:user:alice")), "BadJwt"),
    ("iss-other-method", bearer(lambda f: f.token(iss="did:example:123")), "BadJwt"),
    ("iss-huge", bearer(lambda f: f.token(iss="did:plc:" + "a" * 3000)), "BadJwt"),
    # -- aud
    ("aud-missing", bearer(lambda f: f.token(drop=("aud",))), "BadJwtAudience"),
    (
        "aud-another-spindle",
        bearer(lambda f: f.token(aud="did:web:spindle.elsewhere.example")),
        "BadJwtAudience",
    ),
    ("aud-appview", bearer(lambda f: f.token(aud="did:web:api.bsky.app#bsky_appview")), "BadJwtAudience"),
    ("aud-our-did-other-fragment", bearer(lambda f: f.token(aud=f.aud + "#atproto_pds")), "BadJwtAudience"),
    ("aud-our-did-empty-fragment", bearer(lambda f: f.token(aud=f.aud + "#")), "BadJwtAudience"),
    ("aud-array", bearer(lambda f: f.token(aud=[f.aud])), "BadJwtAudience"),
    ("aud-port-unescaped", bearer(lambda f: f.token(aud=f.aud.replace("%3A", ":"))), "BadJwtAudience"),
    ("aud-issuer-itself", bearer(lambda f: f.token(aud=f.hostile.alice.did)), "BadJwtAudience"),
    # -- lxm
    ("lxm-missing", bearer(lambda f: f.token(lxm=None)), "BadJwtLexiconMethod"),
    (
        "lxm-cancel",
        bearer(lambda f: f.token(lxm="sh.tangled.pipeline.cancelPipeline")),
        "BadJwtLexiconMethod",
    ),
    ("lxm-array", bearer(lambda f: f.token(lxm=[TRIGGER_NSID])), "BadJwtLexiconMethod"),
    ("lxm-wildcard", bearer(lambda f: f.token(lxm="*")), "BadJwtLexiconMethod"),
    ("lxm-uppercase", bearer(lambda f: f.token(lxm=TRIGGER_NSID.upper())), "BadJwtLexiconMethod"),
    ("lxm-null", bearer(lambda f: f.token(claims={"lxm": None})), "BadJwtLexiconMethod"),
    # -- exp
    ("exp-missing", bearer(lambda f: f.token(drop=("exp",))), "BadJwt"),
    ("exp-past", bearer(lambda f: f.token(iat=now() - 120, exp=now() - 60)), "JwtExpired"),
    ("exp-two-hours-ahead", bearer(lambda f: f.token(exp=now() + 7200)), "BadJwt"),
    ("exp-string", bearer(lambda f: f.token(claims={"exp": str(now() + 60)})), "BadJwt"),
    ("exp-bool", bearer(lambda f: f.token(claims={"exp": True})), "BadJwt"),
    ("exp-huge-float", bearer(lambda f: f.token(claims={"exp": 1e308})), "BadJwt"),
    ("exp-huge-int", bearer(lambda f: f.token(claims={"exp": 10**400})), "BadJwt"),
    # -- iat
    ("iat-missing", bearer(lambda f: f.token(drop=("iat",))), "BadJwt"),
    ("iat-future", bearer(lambda f: f.token(iat=now() + 600, exp=now() + 900)), "BadJwt"),
    ("iat-two-hours-ago", bearer(lambda f: f.token(iat=now() - 7200)), "BadJwt"),
    ("iat-string", bearer(lambda f: f.token(claims={"iat": str(now())})), "BadJwt"),
    ("iat-null", bearer(lambda f: f.token(claims={"iat": None})), "BadJwt"),
    # -- jti
    ("jti-missing", bearer(lambda f: f.token(drop=("jti",))), "BadJwt"),
    ("jti-empty", bearer(lambda f: f.token(claims={"jti": ""})), "BadJwt"),
    ("jti-huge", bearer(lambda f: f.token(claims={"jti": "j" * 4000})), "BadJwt"),
    ("jti-number", bearer(lambda f: f.token(claims={"jti": 12345})), "BadJwt"),
    ("jti-null", bearer(lambda f: f.token(claims={"jti": None})), "BadJwt"),
    ("jti-array", bearer(lambda f: f.token(claims={"jti": ["a"]})), "BadJwt"),
    # -- signature
    ("signature-empty", bearer(lambda f: f.token().rsplit(".", 1)[0] + "."), "BadJwt"),
    (
        "signature-truncated-63",
        bearer(lambda f: f.with_signature(t := f.token(), f.signature(t)[:63])),
        "BadJwtSignature",
    ),
    (
        "signature-truncated-32",
        bearer(lambda f: f.with_signature(t := f.token(), f.signature(t)[:32])),
        "BadJwtSignature",
    ),
    (
        "signature-65-bytes",
        bearer(lambda f: f.with_signature(t := f.token(), f.signature(t) + b"\0")),
        "BadJwtSignature",
    ),
    ("signature-oversized", bearer(lambda f: f.with_signature(f.token(), b"\x01" * 4096)), "BadJwtSignature"),
    (
        "signature-der-encoded",
        bearer(
            lambda f: f.with_signature(
                t := f.token(), b"\x30\x44\x02\x20" + f.signature(t)[:32] + b"\x02\x20" + f.signature(t)[32:]
            )
        ),
        "BadJwtSignature",
    ),
    ("signature-high-s", bearer(lambda f: f.token(low_s=False)), "BadJwtSignature"),
    ("signature-all-zero", bearer(lambda f: f.with_signature(f.token(), b"\0" * 64)), "BadJwtSignature"),
    ("signature-by-another-key", bearer(lambda f: f.token(key=STRANGER)), "BadJwtSignature"),
    (
        "signature-by-bobs-key-claiming-alice",
        bearer(lambda f: f.token(key=f.hostile.bob.key)),
        "BadJwtSignature",
    ),
    (
        "payload-changed-after-signing",
        bearer(
            lambda f: (
                (t := f.token()).split(".")[0]
                + "."
                + b64url(f.payload(jti="swapped").encode())
                + "."
                + t.split(".")[2]
            )
        ),
        "BadJwtSignature",
    ),
    (
        "signature-of-another-token",
        bearer(lambda f: f.with_signature(f.token(), f.signature(f.token()))),
        "BadJwtSignature",
    ),
]


@pytest.mark.parametrize(("build", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_rejects_a_forged_or_malformed_token_with_401_and_records_nothing(
    hostile: Hostile, build: Build, error: str
):
    authorization = build(Forge(hostile))
    # Sent as UTF-8 bytes: a client can put any octet in a header, not only ASCII.
    headers = {} if authorization is None else {"authorization": authorization.encode()}
    hostile.knot.clear_requests()
    before = await hostile.snapshot()

    response = await hostile.spindle.trigger(hostile.repo.body(), headers=headers)

    assert_xrpc_error(response, 401, error)
    assert response.headers["www-authenticate"].startswith("Bearer")
    await hostile.assert_unchanged(before)


async def test_the_case_table_has_unique_ids_and_covers_every_error_name():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))
    assert {case[2] for case in CASES} == {
        "AuthenticationRequired",
        "BadJwt",
        "BadJwtSignature",
        "JwtExpired",
        "BadJwtAudience",
        "BadJwtLexiconMethod",
    }


async def test_a_lowercase_bearer_scheme_is_accepted_as_rfc_7235_says(hostile: Hostile):
    # Authentication schemes are case-insensitive (RFC 7235 §2.1); refusing would only break clients.
    response = await hostile.spindle.trigger(
        hostile.repo.body(), headers={"authorization": f"bearer {Forge(hostile).token()}"}
    )

    assert response.status_code == 200, response.text


async def test_a_forged_token_does_not_burn_the_jti_of_the_genuine_one(hostile: Hostile):
    forge = Forge(hostile)
    genuine = forge.token(jti="shared-jti-1")
    forged = forge.token(key=STRANGER, jti="shared-jti-1")

    refused = await hostile.spindle.trigger(hostile.repo.body(), token=forged)
    accepted = await hostile.spindle.trigger(hostile.repo.body(), token=genuine)

    assert_xrpc_error(refused, 401, "BadJwtSignature")
    assert accepted.status_code == 200, accepted.text


async def test_a_genuine_token_for_another_actor_is_403_and_records_nothing(hostile: Hostile):
    before = await hostile.snapshot()

    response = await hostile.spindle.trigger(hostile.repo.body(), by=hostile.bob)

    assert_xrpc_error(response, 403, "Forbidden")
    await hostile.assert_unchanged(before)


@pytest.mark.parametrize("size", [20_000, 60_000, 200_000])
async def test_a_huge_authorization_header_is_refused_without_a_500(hostile: Hostile, size: int):
    before = await hostile.snapshot()

    response = await hostile.spindle.trigger(
        hostile.repo.body(), headers={"authorization": "Bearer " + "a" * size}
    )

    # The HTTP server may refuse the header itself (431/400) before the route sees it.
    assert response.status_code in (400, 401, 431), response.text
    if response.status_code == 401:
        assert_xrpc_error(response, 401, "BadJwt")
    await hostile.assert_unchanged(before)
