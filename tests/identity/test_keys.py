"""#atproto keys: both curves, canonical (low-S, 64-byte) signatures only."""

from __future__ import annotations

import pytest

from app.identity.keys import CURVE_ORDERS, ES256, ES256K, key_from_verification_method
from tests.support.keys import SigningKey, did_document


def key_of(signer: SigningKey, *, legacy: bool = False):
    return key_from_verification_method(
        did_document("did:plc:k", signer, legacy=legacy)["verificationMethod"][0]
    )


@pytest.mark.parametrize("alg", [ES256K, ES256])
def test_verifies_a_low_s_signature_of_the_message(alg):
    signer = SigningKey.generate(alg)
    assert key_of(signer).verify(b"header.payload", signer.sign(b"header.payload"))


@pytest.mark.parametrize("alg", [ES256K, ES256])
def test_rejects_a_signature_of_another_message(alg):
    signer = SigningKey.generate(alg)
    assert not key_of(signer).verify(b"header.payload", signer.sign(b"header.other"))


@pytest.mark.parametrize("alg", [ES256K, ES256])
def test_rejects_the_high_s_twin_of_a_valid_signature(alg):
    signer = SigningKey.generate(alg)
    high = signer.sign(b"msg", low_s=False)
    assert int.from_bytes(high[32:], "big") > CURVE_ORDERS[alg] // 2
    assert not key_of(signer).verify(b"msg", high)


@pytest.mark.parametrize("alg", [ES256K, ES256])
@pytest.mark.parametrize(
    "mangle", [lambda s: s[:63], lambda s: s + b"\0", lambda s: b"", lambda s: b"\0" * 64]
)
def test_rejects_signatures_that_are_not_64_bytes_of_nonzero_r_and_s(alg, mangle):
    signer = SigningKey.generate(alg)
    assert not key_of(signer).verify(b"msg", mangle(signer.sign(b"msg")))


@pytest.mark.parametrize("alg", [ES256K, ES256])
def test_rejects_r_equal_to_the_curve_order(alg):
    signer = SigningKey.generate(alg)
    signature = signer.sign(b"msg")
    assert not key_of(signer).verify(b"msg", CURVE_ORDERS[alg].to_bytes(32, "big") + signature[32:])


@pytest.mark.parametrize("alg", [ES256K, ES256])
def test_a_signature_by_the_other_curve_does_not_verify(alg):
    other = SigningKey.generate(ES256 if alg == ES256K else ES256K)
    assert not key_of(SigningKey.generate(alg)).verify(b"msg", other.sign(b"msg"))


def test_a_legacy_type_naming_the_wrong_curve_is_refused():
    signer = SigningKey.generate(ES256)
    method = did_document("did:plc:k", signer, legacy=True)["verificationMethod"][0]
    method["type"] = "EcdsaSecp256k1VerificationKey2019"
    with pytest.raises(ValueError, match="not a valid EcdsaSecp256k1VerificationKey2019 key"):
        key_from_verification_method(method)


@pytest.mark.parametrize(
    ("method", "reason"),
    [
        ({"type": "Ed25519VerificationKey2020", "publicKeyMultibase": "z6Mk"}, "unsupported type"),
        ({"type": "Multikey"}, "no publicKeyMultibase"),
        ({"type": "Multikey", "publicKeyMultibase": 7}, "no publicKeyMultibase"),
        ("not an object", "not an object"),
    ],
)
def test_methods_without_a_usable_key_say_why(method, reason):
    with pytest.raises(ValueError, match=reason):
        key_from_verification_method(method)
