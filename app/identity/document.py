"""A DID document checked against the DID it claims to be, with its `#atproto` key parsed once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.identity.exceptions import InvalidDidDocument, UnreadableAnswer
from app.identity.keys import VerifyingKey, key_from_verification_method


@dataclass(frozen=True, slots=True)
class DidDocument:
    did: str
    raw: dict[str, Any]
    # None when the document has no usable #atproto key; `key_problem` then says why.
    key: VerifyingKey | None
    key_problem: str | None = None


def _atproto_method(did: str, methods: Any) -> Any:
    if not isinstance(methods, list):
        return None
    for method in methods:
        if isinstance(method, dict) and method.get("id") in ("#atproto", f"{did}#atproto"):
            return method
    return None


def parse_document(*, did: str, body: bytes) -> DidDocument:
    """Parse the directory's answer for `did`; InvalidDidDocument unless it is this DID's document."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise UnreadableAnswer(did, "the answer is not JSON") from None
    if not isinstance(raw, dict):
        raise InvalidDidDocument(did, "the answer is not a JSON object")
    # Without this check any host or directory could serve another identity's keys.
    if raw.get("id") != did:
        shown = str(raw.get("id"))[:200]
        raise InvalidDidDocument(did, f"the document's id {shown!r} is not the DID that was resolved")
    method = _atproto_method(did, raw.get("verificationMethod"))
    if method is None:
        return DidDocument(did=did, raw=raw, key=None, key_problem="it has no #atproto verification method")
    try:
        key = key_from_verification_method(method)
    except ValueError as exc:
        return DidDocument(did=did, raw=raw, key=None, key_problem=str(exc))
    return DidDocument(did=did, raw=raw, key=key)
