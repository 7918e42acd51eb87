"""Service-auth JWT verification: who is calling, proven by their PDS's signature.

A PDS mints `Authorization: Bearer <JWT>` signed with the `#atproto` key of the account's DID
(https://atproto.com/specs/xrpc#inter-service-authentication-jwt). We do not use the atproto SDK's
`verify_jwt`: it ignores `lxm`, `jti` and `typ` and accepts a token without `exp`, so a token minted
for another method, or one that never expires, would pass.

Checks run cheapest first, as bluesky's xrpc-server `verifyJwt` does, each failure with its own
error name: format → typ → exp/iat → aud → lxm → iss → signature (re-resolving the issuer's key
once on failure, for key rotation) → jti. The jti is recorded only after the signature holds, so a
forged token cannot burn the jti of a victim's genuine one.
"""

from __future__ import annotations

import binascii
import json
import re
import time
from collections.abc import Callable
from typing import Any, NoReturn

from app.auth.replay import ReplayGuard, ReplayRejected, SharedReplayLedger
from app.config import DID_RE
from app.identity import SERVICE_ID
from app.identity.document import DidDocument
from app.identity.exceptions import ResolutionError
from app.identity.keys import ES256, ES256K, is_canonical_signature
from app.identity.resolver import DidResolver
from app.xrpc.errors import AuthenticationError

ALGORITHMS = frozenset({ES256K, ES256})
# Access, refresh and DPoP tokens are for a PDS itself; accepting one here would let whoever
# sees a user's session token act as them towards us.
FORBIDDEN_TYPES = frozenset({"at+jwt", "refresh+jwt", "dpop+jwt"})
LEEWAY = 5  # seconds of clock skew tolerated on exp and iat
MAX_LIFETIME = 3600  # a PDS mints 60 s tokens, and at most 1 h ones when lxm is set
MAX_TOKEN_LENGTH = 8 * 1024
MAX_JTI_LENGTH = 256
MAX_CACHED_HEADERS = 256  # distinct accepted headers remembered (one per PDS implementation, in practice)

# Three unpadded base64url segments; anything else (padding, '+', '/', whitespace) is not a JWS.
_TOKEN_RE = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_BASE64 = bytes.maketrans(b"-_", b"+/")
# Last characters whose unused low bits are zero: other ones decode to the same bytes, a second
# spelling of one token.
_CANONICAL_LAST = {
    2: frozenset(c for i, c in enumerate(_B64_ALPHABET) if i & 0b1111 == 0),
    3: frozenset(c for i, c in enumerate(_B64_ALPHABET) if i & 0b11 == 0),
}


def _fail(error: str, message: str) -> NoReturn:
    raise AuthenticationError(message, error=error)


def _b64decode(segment: str, part: str) -> bytes:
    remainder = len(segment) % 4
    if remainder == 1 or (remainder and segment[-1] not in _CANONICAL_LAST[remainder]):
        _fail("BadJwt", f"the JWT {part} is not canonical base64url")
    try:
        # The token's pattern admits only the base64url alphabet; padded, it decodes as base64.
        return binascii.a2b_base64((segment + "=" * (-remainder % 4)).encode("ascii").translate(_TO_BASE64))
    except binascii.Error:
        _fail("BadJwt", f"the JWT {part} is not base64url")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Built once: json.loads(..., parse_constant=...) would build a decoder per call. NaN and
# Infinity are refused because every comparison with NaN is false (an exp that never expires).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_json(segment: str, part: str) -> dict[str, Any]:
    try:
        value = _JSON.decode(_b64decode(segment, part).decode("utf-8"))
    except (ValueError, RecursionError):
        _fail("BadJwt", f"the JWT {part} is not JSON")
    if not isinstance(value, dict):
        _fail("BadJwt", f"the JWT {part} is not a JSON object")
    return value


def _check_header(header: dict[str, Any]) -> str:
    """The alg of a service-auth JWT header; BadJwt unless alg, kid and typ are acceptable."""
    alg = header.get("alg")
    if type(alg) is not str or alg not in ALGORITHMS:
        _fail("BadJwt", f"the JWT alg {str(alg)[:40]!r} is not supported: use ES256K or ES256")
    kid = header.get("kid")
    if kid is not None and kid != "#atproto":
        _fail("BadJwt", f"the JWT kid {str(kid)[:80]!r} is not #atproto")
    typ = header.get("typ")
    if typ is not None:
        if not isinstance(typ, str):
            _fail("BadJwt", "the JWT typ must be a string")
        media_type = typ.lower().removeprefix("application/")
        if media_type in FORBIDDEN_TYPES:
            _fail("BadJwt", f"a {typ} token is not a service-auth token")
    return alg


def _number(payload: dict[str, Any], name: str) -> float:
    value = payload.get(name)
    if value is None:
        _fail("BadJwt", f"the JWT has no {name}: service-auth tokens must carry exp and iat")
    # bool is an int in Python, and true/false are not times.
    if type(value) is not int and type(value) is not float:
        _fail("BadJwt", f"the JWT {name} must be a number of seconds, got {type(value).__name__}")
    return value


class ServiceAuthVerifier:
    """Checks service-auth JWTs addressed to `service_did` and returns the issuer's DID."""

    def __init__(
        self,
        *,
        resolver: DidResolver,
        service_did: str,
        service_id: str = SERVICE_ID,
        replay: ReplayGuard | None = None,
        ledger: SharedReplayLedger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.service_did = service_did
        # PDSes send the bare DID today; the revised spec prefers the one naming the service.
        self.audiences = frozenset({service_did, f"{service_did}#{service_id}"})
        self.replay = replay if replay is not None else ReplayGuard()
        # Set when several processes may share the database: a jti then counts once for all.
        self.ledger = ledger
        self._clock = clock
        self._headers: dict[str, str] = {}  # header segment -> its alg, once checked

    async def verify(self, authorization: str | None, *, lxm: str) -> str:
        """The DID of the caller of method `lxm`; AuthenticationError (401) names what is wrong."""
        token = _bearer_token(authorization)
        now = self._clock()

        # Format: three segments, JSON objects, a supported alg, a signature of the right shape.
        if len(token) > MAX_TOKEN_LENGTH:
            _fail("BadJwt", f"the JWT is longer than {MAX_TOKEN_LENGTH} characters")
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            _fail("BadJwt", "the JWT must be three base64url segments separated by '.'")
        # A PDS signs every token with the same header: the alg of a header already accepted.
        alg = self._headers.get(match[1])
        if alg is None:
            alg = _check_header(_decode_json(match[1], "header"))
            if len(self._headers) >= MAX_CACHED_HEADERS:
                self._headers.clear()
            self._headers[match[1]] = alg
        payload = _decode_json(match[2], "payload")
        signature = _b64decode(match[3], "signature")
        if not is_canonical_signature(alg, signature):
            if len(signature) != 64:
                _fail("BadJwtSignature", f"the signature must be 64 bytes (r‖s), got {len(signature)}")
            _fail("BadJwtSignature", "the signature is not canonical: atproto requires low-S r‖s")

        exp = _number(payload, "exp")
        iat = _number(payload, "iat")
        if exp <= now - LEEWAY:
            _fail("JwtExpired", "the JWT has expired")
        if exp > now + MAX_LIFETIME + LEEWAY:
            _fail("BadJwt", "the JWT exp is more than 1 hour ahead")
        if iat > now + LEEWAY:
            _fail("BadJwt", "the JWT iat is in the future")
        if iat < now - MAX_LIFETIME - LEEWAY:
            _fail("BadJwt", "the JWT iat is more than 1 hour in the past")

        aud = payload.get("aud")
        if not isinstance(aud, str) or aud not in self.audiences:
            _fail("BadJwtAudience", f"the JWT aud must be {self.service_did}, got {str(aud)[:200]!r}")

        token_lxm = payload.get("lxm")
        if token_lxm is None:
            _fail("BadJwtLexiconMethod", f"the JWT has no lxm: it must be {lxm}")
        if token_lxm != lxm:
            _fail("BadJwtLexiconMethod", f"the JWT lxm {str(token_lxm)[:200]!r} is not {lxm}")

        iss = payload.get("iss")
        if not isinstance(iss, str):
            _fail("BadJwt", "the JWT has no iss")
        if "#" in iss:
            _fail("BadJwt", "the JWT iss must be a DID without a #fragment")
        if len(iss) > 2048 or not DID_RE.match(iss):
            _fail("BadJwt", f"the JWT iss {iss[:200]!r} is not a DID")
        jti = payload.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            _fail("BadJwt", f"the JWT jti must be a string of 1 to {MAX_JTI_LENGTH} characters")
        if self.replay.seen(iss=iss, jti=jti, now=now):
            _fail("BadJwt", "token replayed: this jti was already used by this issuer")

        signing_input = token[: match.end(2)].encode("ascii")
        document = self.resolver.fresh(iss) or await self._document(iss)
        key = document.key
        if key is None or key.alg != alg or not key.verify(signing_input, signature):
            # The issuer may have rotated its key since we cached its document: look again, once.
            document = await self._document(iss, force_refresh=True)
            fresh = document.key
            if fresh is None:
                _fail("BadJwt", f"the JWT issuer {iss} has no usable signing key: {document.key_problem}")
            if fresh.alg != alg:
                _fail(
                    "BadJwtSignature",
                    f"the JWT alg {alg} does not match the {fresh.alg} #atproto key of {iss}",
                )
            if fresh is key or not fresh.verify(signing_input, signature):
                _fail("BadJwtSignature", f"the JWT signature does not verify with the #atproto key of {iss}")

        try:
            self.replay.record(iss=iss, jti=jti, forget_at=exp + LEEWAY, now=now)
            if self.ledger is not None:
                await self.ledger.claim(iss=iss, jti=jti, forget_at=exp + LEEWAY)
        except ReplayRejected as exc:
            _fail("BadJwt", str(exc))
        return iss

    async def _document(self, iss: str, *, force_refresh: bool = False) -> DidDocument:
        try:
            return await self.resolver.resolve(iss, force_refresh=force_refresh)
        except ResolutionError as exc:
            _fail("BadJwt", f"could not resolve the JWT issuer {iss}: {exc.reason}")


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        _fail(
            "AuthenticationRequired", "authentication required: send Authorization: Bearer <service-auth JWT>"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _fail("AuthenticationRequired", "the Authorization header must be 'Bearer <service-auth JWT>'")
    return token
