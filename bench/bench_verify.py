"""Service-auth verifications per second, next to a bare `cryptography` signature check.

    .venv/bin/python bench/bench_verify.py [--tokens N]

For each curve: the full verifier (header/claims parsing, replay guard, cached DID document,
signature) on fresh tokens, each with its own jti, and in the same run the bare cost of
`EllipticCurvePublicKey.verify` on a DER signature with a cached public key (best of interleaved
rounds for both). The target is a
verifier no more than 2x the bare check; ES256K uses libsecp256k1 and should beat it outright.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import time

import coincurve
import httpx
from atproto_crypto.did import format_multikey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from app.auth.replay import ReplayGuard
from app.auth.verifier import ServiceAuthVerifier
from app.identity.keys import CURVE_ORDERS
from app.identity.resolver import DidResolver

SERVICE_DID = "did:web:spindle.bench"
NSID = "com.publicdomainrelay.temp.tangled.spindle.trigger"
ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """Mints tokens quickly: coincurve for secp256k1, cryptography for P-256 (minting is not timed)."""

    def __init__(self, alg: str) -> None:
        self.alg = alg
        curve = ec.SECP256K1() if alg == "ES256K" else ec.SECP256R1()
        self.private = ec.generate_private_key(curve)
        self.public = self.private.public_key()
        point = self.public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.multikey = format_multikey(alg, point)
        if alg == "ES256K":
            secret = self.private.private_numbers().private_value.to_bytes(32, "big")
            self._k1 = coincurve.PrivateKey(secret)

    def sign_der(self, data: bytes) -> bytes:
        if self.alg == "ES256K":
            return self._k1.sign(data)  # low-S DER, SHA-256
        der = self.private.sign(data, ECDSA_SHA256)
        r, s = decode_dss_signature(der)
        order = CURVE_ORDERS[self.alg]
        return encode_dss_signature(r, min(s, order - s))


def mint(signer: Signer, did: str, count: int) -> tuple[list[str], list[tuple[bytes, bytes]]]:
    """`count` fresh tokens, and (signing input, DER signature) pairs for the bare check."""
    header = b64url(json.dumps({"typ": "JWT", "alg": signer.alg}).encode())
    now = int(time.time())
    tokens, pairs = [], []
    for _ in range(count):
        claims = {"iat": now, "iss": did, "aud": SERVICE_DID, "exp": now + 600, "lxm": NSID}
        claims["jti"] = secrets.token_hex(16)
        signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
        der = signer.sign_der(signing_input.encode())
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        tokens.append(f"Bearer {signing_input}.{b64url(raw)}")
        pairs.append((signing_input.encode(), der))
    return tokens, pairs


def bare_seconds(public: ec.EllipticCurvePublicKey, pairs: list[tuple[bytes, bytes]]) -> float:
    start = time.perf_counter()
    for data, der in pairs:
        public.verify(der, data, ECDSA_SHA256)
    return time.perf_counter() - start


async def verifier_seconds(verifier: ServiceAuthVerifier, tokens: list[str]) -> float:
    start = time.perf_counter()
    for token in tokens:
        await verifier.verify(token, lxm=NSID)
    return time.perf_counter() - start


async def rates(signer: Signer, count: int, rounds: int) -> tuple[float, float]:
    """(verifier/s, bare/s), each the best of `rounds` interleaved rounds of `count` checks.

    Interleaving and best-of keep the two comparable on a machine shared with other work: a
    burst of load slows some rounds of either, not all rounds of one.
    """
    did = "did:plc:" + "b" * 24
    document = {
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": signer.multikey,
            }
        ],
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=document))
    async with httpx.AsyncClient(transport=transport) as http:
        resolver = DidResolver(http=http, plc_url="https://plc.bench", dev=False)
        total = count * rounds
        replay = ReplayGuard(max_entries=total + 10, max_per_issuer=total + 10)
        verifier = ServiceAuthVerifier(resolver=resolver, service_did=SERVICE_DID, replay=replay)
        await resolver.resolve(did)  # the DID document is cached before timing starts
        tokens, pairs = mint(signer, did, total)
        full, bare = [], []
        for i in range(rounds):
            chunk = slice(i * count, (i + 1) * count)
            full.append(await verifier_seconds(verifier, tokens[chunk]))
            bare.append(bare_seconds(signer.public, pairs[chunk]))
        assert len(replay) == total, f"every token was accepted once ({len(replay)} of {total})"
    return count / min(full), count / min(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=500, help="tokens per round and curve (default 500)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    args = parser.parse_args()
    print(f"{'alg':7} {'verifier/s':>11} {'bare cryptography/s':>20} {'verifier cost / bare cost':>26}")
    for alg in ("ES256K", "ES256"):
        full, bare = asyncio.run(rates(Signer(alg), args.tokens, args.rounds))
        print(f"{alg:7} {full:11.0f} {bare:20.0f} {bare / full:26.2f}")


if __name__ == "__main__":
    main()
