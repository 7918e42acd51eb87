"""Service-auth JWT verification. (Skeleton: being written.)"""

from __future__ import annotations

from app.identity.resolver import DidResolver


class ServiceAuthVerifier:
    def __init__(self, *, resolver: DidResolver, service_did: str) -> None:
        self.resolver = resolver
        self.service_did = service_did
