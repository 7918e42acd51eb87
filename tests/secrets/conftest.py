"""Secrets tests: a registered repo on a fresh database, and settings without a container engine."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from app.config import Settings
from app.database import create_engine, create_sessionmaker
from app.repos import service as repo_service

KNOT = "knot.example.com"
REPO_DID = "did:plc:secretsrepo00000000000000"
REPO_NAME = "demo"
REPO_RKEY = "3lsecretsrepo"
OWNER = "did:plc:spindleownersecrets000000"


def fresh_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def plain_settings(url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": url,
        "data_dir": data_dir,
        "owner": OWNER,
        "dev": True,
        "secrets_key": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def register_repo(url: str, **overrides: object) -> int:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            values: dict[str, object] = {
                "knot": KNOT,
                "did": REPO_DID,
                "name": REPO_NAME,
                "owner_did": REPO_DID,
                "collaborators": [],
                "rkey": REPO_RKEY,
            }
            values.update(overrides)
            repo = await repo_service.add(session=session, **values)  # type: ignore[arg-type]
            return repo.id
    finally:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # A key in the developer's environment must not decide what these tests see.
    monkeypatch.delenv("SPINDLE_SECRETS_KEY", raising=False)


# The reference PDS and our service under uvicorn, as the interop tests use them.
from tests.interop.conftest import (  # noqa: E402, F401
    reference_pds,
    spindle,
    spindle_database_url,
    spindle_settings,
)
