"""Tangled names a repo by the at-uri of its record, whose key is a TID, not by the repo's name."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import create_engine, create_sessionmaker
from app.repos import service as repos_service
from app.repos.service import RepoUri, parse_repo_uri

KNOT = "knot.example.com"
OWNER = "did:plc:abcdefghijklmnopqrstuvwx"
TID = "3lbq2xkz7ac2a"


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


def test_parses_a_repo_uri_into_its_did_and_record_key() -> None:
    uri = parse_repo_uri(f"at://{OWNER}/sh.tangled.repo/{TID}")
    assert uri == RepoUri(OWNER, TID)
    assert str(uri) == f"at://{OWNER}/sh.tangled.repo/{TID}"


@pytest.mark.parametrize(
    "value",
    [
        f"at://{OWNER}/sh.tangled.pipeline/{TID}",
        f"at://{OWNER}/sh.tangled.repo/",
        f"at://{OWNER}/sh.tangled.repo/..",
        f"at://{OWNER}/sh.tangled.repo/{TID}/extra",
        f"at://example.com/sh.tangled.repo/{TID}",
        f"https://{OWNER}/sh.tangled.repo/{TID}",
        f"at://{OWNER}/sh.tangled.repo/a b",
    ],
)
def test_refuses_what_is_not_a_repo_uri(value: str) -> None:
    assert parse_repo_uri(value) is None


async def test_finds_the_repo_by_its_record_key_not_its_name(sessions) -> None:
    async with sessions() as session:
        await repos_service.add(
            session=session, knot=KNOT, did=OWNER, name="hello", owner_did=OWNER, collaborators=(), rkey=TID
        )
        repo = await repos_service.find_by_uri(session=session, uri=RepoUri(OWNER, TID))
        assert repo is not None and repo.name == "hello" and repo.source == "cli"
        # The name is not a key once the record key is known.
        assert await repos_service.find_by_uri(session=session, uri=RepoUri(OWNER, "hello")) is None
        assert await repos_service.find_by_uri(session=session, uri=RepoUri(OWNER, "3lbq2xkz7ac2b")) is None


async def test_a_repo_registered_without_record_key_is_found_by_its_name(sessions) -> None:
    async with sessions() as session:
        await repos_service.add(
            session=session, knot=KNOT, did=OWNER, name="hello", owner_did=OWNER, collaborators=()
        )
        repo = await repos_service.find_by_uri(session=session, uri=RepoUri(OWNER, "hello"))
        assert repo is not None and repo.rkey is None
        other = RepoUri("did:plc:bcdefghijklmnopqrstuvwxy", "hello")
        assert await repos_service.find_by_uri(session=session, uri=other) is None
