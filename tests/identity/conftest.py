"""Fixtures for resolver tests: one HTTP client, a did:web host, resolvers on the local PLC."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from app.identity.resolver import DidResolver
from tests.support.didweb import DidWebHost
from tests.support.plc import FakePlc


@pytest.fixture(scope="session")
def tls() -> ssl.SSLContext:
    """One TLS context for every test's client: building one costs more than most tests."""
    return ssl.create_default_context()


@pytest.fixture
async def http(tls: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False, verify=tls) as client:
        yield client


@pytest.fixture
def did_web_host() -> Iterator[DidWebHost]:
    with DidWebHost() as host:
        yield host


@pytest.fixture
def make_resolver(http: httpx.AsyncClient, plc: FakePlc) -> Callable[..., DidResolver]:
    """A resolver on the local PLC, in dev mode unless told otherwise."""

    def build(**overrides: Any) -> DidResolver:
        values: dict[str, Any] = {"http": http, "plc_url": plc.url, "dev": True}  # type: ignore[attr-defined]
        values.update(overrides)
        return DidResolver(**values)

    return build
