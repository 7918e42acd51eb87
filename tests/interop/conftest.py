"""Fixtures for proof against real peers: the reference PDS from npm, and our service on real HTTP.

`reference_pds` (session): @atproto/dev-env's PLC directory and PDS in one Node process (pds.mjs).
`spindle`: our service under uvicorn on `localhost:<port>`, resolving DIDs on that PLC, so that the
PDS can resolve `did:web:localhost%3A<port>` and proxy to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.main import create_app
from tests.interop.harness import HERE, ReferencePds, Spindle, harness_installed
from tests.support.servers import ServerThread, free_port

OWNER_DID = "did:plc:spindleowneraaaaaaaaaaaa"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Like the PostgreSQL tests: without the npm install these cannot run; say so loudly.
    if harness_installed():
        return
    dropped = [i for i in items if "pds" in i.keywords]
    if dropped:
        print(
            f"\n*** {len(dropped)} reference-PDS tests not run: `npm ci` in {HERE} first (scripts/test does)"
        )
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if "pds" not in i.keywords]


@pytest.fixture(scope="session")
def reference_pds() -> Iterator[ReferencePds]:
    """The reference PLC directory and PDS (@atproto/dev-env 0.3.172), started once per session."""
    with ReferencePds() as pds:
        yield pds


@pytest.fixture
def spindle_database_url(sqlite_url: str) -> str:
    """SQLite unless a test class overrides it (with `database_url`, to run on PostgreSQL too)."""
    return sqlite_url


@pytest.fixture
def spindle_settings(tmp_path: Path, reference_pds: ReferencePds, spindle_database_url: str) -> Settings:
    """Dev-mode settings on a free port of `localhost`: the only host the dev-env PDS reaches over http."""
    port = free_port()
    return Settings(
        hostname=f"localhost:{port}",
        listen=f"127.0.0.1:{port}",
        dev=True,
        plc_url=reference_pds.plc_url,
        owner=OWNER_DID,
        database_url=spindle_database_url,
        data_dir=tmp_path / "data",
        jetstream_url="",  # never the public Jetstream
    )


@pytest.fixture
def spindle(spindle_settings: Settings) -> Iterator[Spindle]:
    """Our service under uvicorn, answering on the port its hostname names."""
    app = create_app(spindle_settings)
    with ServerThread(app, port=spindle_settings.listen_port, timeout_graceful_shutdown=5) as server:
        yield Spindle(spindle_settings, server)
