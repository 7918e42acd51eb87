"""Fixtures for verifier tests: a verifier on the local PLC with a clock the test controls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.auth.verifier import ServiceAuthVerifier
from app.identity.resolver import DidResolver
from tests.identity import conftest as identity_fixtures
from tests.support.clock import ManualClock

# The resolver fixtures of tests/identity, shared here.
tls = identity_fixtures.tls
http = identity_fixtures.http
did_web_host = identity_fixtures.did_web_host
make_resolver = identity_fixtures.make_resolver

SERVICE_DID = "did:web:spindle.test"
NSID = "com.publicdomainrelay.temp.tangled.spindle.trigger"


@pytest.fixture
def clock() -> ManualClock:
    """Wall-clock time for the verifier, frozen at the start of the test."""
    return ManualClock()


@pytest.fixture
def make_verifier(
    make_resolver: Callable[..., DidResolver], clock: ManualClock
) -> Callable[..., ServiceAuthVerifier]:
    def build(resolver: DidResolver | None = None, **overrides: Any) -> ServiceAuthVerifier:
        values: dict[str, Any] = {
            "resolver": resolver or make_resolver(),
            "service_did": SERVICE_DID,
            "clock": clock,
        }
        values.update(overrides)
        return ServiceAuthVerifier(**values)

    return build


@pytest.fixture
def verifier(make_verifier: Callable[..., ServiceAuthVerifier]) -> ServiceAuthVerifier:
    return make_verifier()
