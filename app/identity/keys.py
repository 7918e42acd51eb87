"""The `#atproto` signing key of a DID document, parsed once and cached with the document.

Signatures are atproto's raw 64-byte r‖s, low-S only (https://atproto.com/specs/cryptography):
a high-S twin of a valid signature is rejected so that a token has exactly one valid encoding.
ES256K is checked with libsecp256k1 (coincurve, about ten times faster than OpenSSL's generic
secp256k1 code); ES256 with `cryptography` (OpenSSL's tuned P-256).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import coincurve
from atproto_core.exceptions import AtProtocolError
from atproto_crypto.consts import P256_CURVE_ORDER, SECP256K1_CURVE_ORDER
from atproto_crypto.did import get_did_key, parse_did_key, parse_multikey
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ES256K = "ES256K"
ES256 = "ES256"
CURVE_ORDERS = {ES256K: SECP256K1_CURVE_ORDER, ES256: P256_CURVE_ORDER}
_HALF_ORDERS = {alg: order // 2 for alg, order in CURVE_ORDERS.items()}
LEGACY_KEY_TYPES = {
    "EcdsaSecp256k1VerificationKey2019": ES256K,
    "EcdsaSecp256r1VerificationKey2019": ES256,
}
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def is_canonical_signature(alg: str, signature: bytes) -> bool:
    """True when `signature` is 64 bytes r‖s with 0 < r < n and 0 < s ≤ n/2 on the curve of `alg`."""
    if len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    return 0 < r < CURVE_ORDERS[alg] and 0 < s <= _HALF_ORDERS[alg]


class VerifyingKey(ABC):
    """A public key that checks atproto signatures (raw r‖s over SHA-256 of the message)."""

    __slots__ = ("alg", "did_key")

    def __init__(self, *, alg: str, did_key: str) -> None:
        self.alg = alg
        self.did_key = did_key

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff `signature` is a canonical (low-S) signature of `message` by this key."""
        if not is_canonical_signature(self.alg, signature):
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        return self._verify_der(message, encode_dss_signature(r, s))

    @abstractmethod
    def _verify_der(self, message: bytes, der: bytes) -> bool:
        """Check a DER-encoded signature with this curve's library."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.did_key})"


class Secp256k1Key(VerifyingKey):
    __slots__ = ("_key",)

    def __init__(self, *, did_key: str, point: bytes) -> None:
        super().__init__(alg=ES256K, did_key=did_key)
        self._key = coincurve.PublicKey(point)

    def _verify_der(self, message: bytes, der: bytes) -> bool:
        # libsecp256k1 refuses high-S on its own; the range check above says so explicitly.
        return self._key.verify(der, message)


class P256Key(VerifyingKey):
    __slots__ = ("_key",)

    def __init__(self, *, did_key: str, point: bytes) -> None:
        super().__init__(alg=ES256, did_key=did_key)
        self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)

    def _verify_der(self, message: bytes, der: bytes) -> bool:
        try:
            self._key.verify(der, message, _ECDSA_SHA256)
        except InvalidSignature:
            return False
        return True


def key_from_verification_method(method: Any) -> VerifyingKey:
    """The key of a Multikey or legacy Ecdsa*VerificationKey2019 method; ValueError says why not."""
    if not isinstance(method, dict):
        raise ValueError("the #atproto verification method is not an object")
    vm_type = method.get("type")
    multibase = method.get("publicKeyMultibase")
    if vm_type != "Multikey" and vm_type not in LEGACY_KEY_TYPES:
        raise ValueError(f"the #atproto verification method has unsupported type {vm_type!r}")
    if not isinstance(multibase, str) or not multibase:
        raise ValueError("the #atproto verification method has no publicKeyMultibase")
    try:
        if vm_type == "Multikey":
            parsed = parse_multikey(multibase)
            did_key = "did:key:" + multibase
        else:
            # Legacy methods carry the bare point (compressed or not) without a multicodec prefix.
            did_key = get_did_key(vm_type, multibase) or ""
            parsed = parse_did_key(did_key)
        if parsed.jwt_alg == ES256K:
            return Secp256k1Key(did_key=did_key, point=parsed.key_bytes)
        return P256Key(did_key=did_key, point=parsed.key_bytes)
    except (AtProtocolError, ValueError, TypeError) as exc:
        raise ValueError(f"the #atproto key {multibase[:80]!r} is not a valid {vm_type} key") from exc
