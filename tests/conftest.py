"""Shared fixtures: a local PLC directory, fresh databases (SQLite and PostgreSQL), settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.support.db import drop_database, new_database, postgres_admin_url
from tests.support.knot import knot, old_knot  # noqa: F401  (fixtures: a local Tangled knot)
from tests.support.plc import FakePlc
from tests.support.podman import podman_engine  # noqa: F401  (fixture: the session's Podman)
from tests.support.servers import ServerThread

OWNER_DID = "did:plc:spindleowneraaaaaaaaaaaa"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Without a PostgreSQL server the postgres variants cannot run; say so loudly rather than skip.
    if postgres_admin_url():
        return
    kept = [i for i in items if "postgres" not in i.keywords]
    dropped = len(items) - len(kept)
    if dropped:
        print(
            f"\n*** {dropped} PostgreSQL tests not run: SPINDLE_TEST_POSTGRES_URL is unset (use scripts/test)"
        )
        config.hook.pytest_deselected(items=[i for i in items if "postgres" in i.keywords])
        items[:] = kept


@pytest.fixture(scope="session")
def plc() -> Iterator[FakePlc]:
    """A PLC directory on loopback over real HTTP."""
    directory = FakePlc()
    with ServerThread(directory.app) as server:
        directory.url = server.url  # type: ignore[attr-defined]
        yield directory


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: each test runs once on SQLite and once on PostgreSQL."""
    url = new_database(request.param, tmp_path)
    yield url
    drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database, for tests that don't depend on the database kind."""
    return new_database("sqlite", tmp_path)


@pytest.fixture
def make_settings(tmp_path: Path, plc: FakePlc, request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings for a service under test: dev mode, the local PLC, a temporary data dir, the
    session's Podman and its small test image (started on first use: tests that build no
    settings never start it)."""

    def build(**overrides: Any) -> Settings:
        engine = request.getfixturevalue("podman_engine")
        values: dict[str, Any] = {
            "docker_host": engine.url,
            "runner_image": engine.image,
            "hostname": "localhost:6555",
            "owner": OWNER_DID,
            "plc_url": plc.url,  # type: ignore[attr-defined]
            "dev": True,
            "jetstream_url": "",  # never the public Jetstream; tests that follow one start their own
            "data_dir": tmp_path / "data",
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'spindle.db'}",
        }
        values.update(overrides)
        return Settings(**values)

    return build
