"""Why a DID could not be resolved.

ResolutionError
├── UnsupportedDid        not did:plc / did:web, bad syntax, or a did:web with a path
├── ForbiddenHost         a did:web host that is, or resolves to, a non-public address
├── DidNotFound           the directory or host says the DID does not exist (404/410, other 4xx)
├── InvalidDidDocument    an answer that is not a DID document for this DID (id mismatch, not JSON, too big)
└── DirectoryUnavailable  network error, timeout, 5xx/429: a cached document may be served instead
    └── UnreadableAnswer  (also an InvalidDidDocument) a 200 whose body is not JSON

The verifier maps each of these to a 401 naming the issuer; none becomes a 500.
"""

from __future__ import annotations


class ResolutionError(Exception):
    def __init__(self, did: str, reason: str) -> None:
        super().__init__(f"could not resolve {did}: {reason}")
        self.did = did
        self.reason = reason


class UnsupportedDid(ResolutionError):
    pass


class ForbiddenHost(ResolutionError):
    pass


class DidNotFound(ResolutionError):
    pass


class InvalidDidDocument(ResolutionError):
    pass


class DirectoryUnavailable(ResolutionError):
    pass


class UnreadableAnswer(InvalidDidDocument, DirectoryUnavailable):
    """An answer that is no document at all (an HTML error page with 200, a cut-off body): the
    directory is failing rather than saying anything about the DID, so a cached document is served."""
