"""Real signing keys (secp256k1 and P-256) and service-auth JWTs signed with them, as a PDS mints them."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from atproto_crypto.did import format_multikey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

CURVES = {
    "ES256K": (ec.SECP256K1(), 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141),
    "ES256": (ec.SECP256R1(), 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    alg: str  # ES256K or ES256
    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, alg: str = "ES256K") -> SigningKey:
        return cls(alg, ec.generate_private_key(CURVES[alg][0]))

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    @property
    def multikey(self) -> str:
        """The `publicKeyMultibase` of a Multikey verification method (z-base58btc, compressed)."""
        return format_multikey(self.alg, self.public_bytes)

    @property
    def did_key(self) -> str:
        return "did:key:" + self.multikey

    def sign(self, data: bytes, *, low_s: bool = True) -> bytes:
        """Raw 64-byte r‖s, low-S normalised as atproto requires (or deliberately high-S)."""
        der = self.private.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        order = CURVES[self.alg][1]
        if low_s and s > order // 2:
            s = order - s
        if not low_s and s <= order // 2:
            s = order - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def did_document(
    did: str, key: SigningKey, *, pds: str = "https://pds.example.com", legacy: bool = False
) -> dict:
    """A DID document as the PLC directory serves it (Multikey), or with a legacy key type."""
    if legacy:
        vm_type = (
            "EcdsaSecp256k1VerificationKey2019"
            if key.alg == "ES256K"
            else "EcdsaSecp256r1VerificationKey2019"
        )
        import libipld

        method = {
            "id": f"{did}#atproto",
            "type": vm_type,
            "controller": did,
            "publicKeyMultibase": libipld.encode_multibase("z", key.public_bytes),
        }
    else:
        method = {
            "id": f"{did}#atproto",
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": key.multikey,
        }
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "alsoKnownAs": [f"at://{did.split(':')[-1][:12]}.test"],
        "verificationMethod": [method],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    }


def mint(
    key: SigningKey,
    *,
    iss: str,
    aud: str,
    lxm: str | None,
    exp: int | None = None,
    iat: int | None = None,
    jti: str | None = None,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    low_s: bool = True,
) -> str:
    """A service-auth JWT as a PDS's getServiceAuth mints it; `header`/`claims`/`drop` break it on purpose."""
    now = int(time.time())
    hdr: dict[str, Any] = {"typ": "JWT", "alg": key.alg}
    hdr.update(header or {})
    payload: dict[str, Any] = {
        "iat": now if iat is None else iat,
        "iss": iss,
        "aud": aud,
        "exp": now + 60 if exp is None else exp,
        "lxm": lxm,
        "jti": jti or secrets.token_hex(16),
    }
    if lxm is None:
        payload.pop("lxm")
    payload.update(claims or {})
    for name in drop:
        hdr.pop(name, None)
        payload.pop(name, None)
    signing_input = f"{b64url(json.dumps(hdr).encode())}.{b64url(json.dumps(payload).encode())}"
    return signing_input + "." + b64url(key.sign(signing_input.encode(), low_s=low_s))
