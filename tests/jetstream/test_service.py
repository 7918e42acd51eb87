"""Tangled's records → what is served, on both databases: who counts, what a bad record does, and
that applying the same change twice changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.database import create_engine, create_sessionmaker
from app.jetstream import service
from app.jetstream.consumer import parse_frame, subscribe_url
from app.jetstream.models import CollaboratorGrant, SpindleMember
from app.jetstream.service import COLLABORATOR, MEMBER, REPO, RecordChange
from app.repos import service as repos_service
from app.repos.models import Repo

OWNER = "did:plc:owneraaaaaaaaaaaaaaaaaaa"
MEMBER_DID = "did:plc:memberaaaaaaaaaaaaaaaaaa"
COLLAB = "did:plc:collabaaaaaaaaaaaaaaaaaa"
HOST = "spindle.example.com"
KNOT = "knot.example.com"
REPO_RKEY = "3lbq2xkz7ac2a"


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def settings() -> Settings:
    return Settings(hostname=HOST, owner=OWNER, jetstream_url="")


async def apply(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    did: str,
    collection: str,
    rkey: str,
    record: dict[str, Any] | None,
    operation: str = "create",
) -> service.Applied:
    change = RecordChange(did, collection, rkey, operation, record)  # type: ignore[arg-type]
    async with sessions() as session:
        return await service.apply(session=session, settings=settings, change=change)


async def repos(sessions: async_sessionmaker[AsyncSession]) -> list[Repo]:
    async with sessions() as session:
        return list(await session.scalars(select(Repo).order_by(Repo.id)))


async def count(sessions: async_sessionmaker[AsyncSession], model: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def repo_record(**overrides: Any) -> dict[str, Any]:
    return {"name": "hello", "knot": KNOT, "spindle": HOST, "createdAt": "2026-01-01T00:00:00Z", **overrides}


async def test_the_same_changes_applied_twice_leave_the_same_state(sessions, settings):
    uri = f"at://{MEMBER_DID}/{REPO}/{REPO_RKEY}"
    changes = [
        (OWNER, MEMBER, "3lbmember0001", {"subject": MEMBER_DID, "instance": HOST}),
        (MEMBER_DID, COLLABORATOR, "3lbcollab0001", {"subject": COLLAB, "repo": uri}),
        (MEMBER_DID, REPO, REPO_RKEY, repo_record()),
    ]
    for _ in range(2):  # a replay after a resume
        for did, collection, rkey, record in changes:
            await apply(sessions, settings, did, collection, rkey, record)

    [repo] = await repos(sessions)
    assert (repo.did, repo.name, repo.rkey, repo.source, repo.collaborators) == (
        MEMBER_DID,
        "hello",
        REPO_RKEY,
        "jetstream",
        [COLLAB],
    )
    assert await count(sessions, SpindleMember) == 1
    assert await count(sessions, CollaboratorGrant) == 1


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"name": "../etc"}, "is not a repo name"),
        ({"name": "x" * 101}, "is not a repo name"),
        ({"name": 42}, "is not a repo name"),
        ({"knot": "https://knot.example.com/"}, "is not a host"),
        ({"knot": "knot.example.com/../x"}, "is not a host"),
        ({"knot": None}, "is not a host"),
    ],
)
async def test_refuses_repo_records_with_a_bad_name_or_knot(sessions, settings, overrides, why):
    applied = await apply(sessions, settings, OWNER, REPO, REPO_RKEY, repo_record(**overrides))

    assert applied.outcome.startswith("ignored") and why in applied.outcome
    assert await repos(sessions) == []


async def test_ignores_records_with_an_invalid_author_or_record_key(sessions, settings):
    for did, rkey in [("not-a-did", REPO_RKEY), (OWNER, "../x"), (OWNER, "")]:
        applied = await apply(sessions, settings, did, REPO, rkey, repo_record())
        assert applied.outcome.startswith("ignored")
    assert await repos(sessions) == []


async def test_a_member_record_with_a_subject_that_is_not_a_did_adds_no_member(sessions, settings):
    await apply(sessions, settings, OWNER, MEMBER, "3lbmember0001", {"subject": "alice", "instance": HOST})
    await apply(sessions, settings, OWNER, MEMBER, "3lbmember0002", {"subject": MEMBER_DID})  # no instance

    assert await count(sessions, SpindleMember) == 0


async def test_changing_a_member_records_subject_stops_serving_the_previous_members_repos(sessions, settings):
    await apply(sessions, settings, OWNER, MEMBER, "3lbmember0001", {"subject": MEMBER_DID, "instance": HOST})
    await apply(sessions, settings, MEMBER_DID, REPO, REPO_RKEY, repo_record())
    assert len(await repos(sessions)) == 1

    applied = await apply(
        sessions, settings, OWNER, MEMBER, "3lbmember0001", {"subject": COLLAB, "instance": HOST}, "update"
    )

    assert applied.new_member == COLLAB
    assert await repos(sessions) == []


async def test_the_operators_registration_is_kept_and_learns_the_record_key(sessions, settings):
    async with sessions() as session:
        await repos_service.add(
            session=session, knot=KNOT, did=OWNER, name="hello", owner_did=OWNER, collaborators=["did:plc:x"]
        )

    await apply(sessions, settings, OWNER, REPO, REPO_RKEY, repo_record())
    await apply(sessions, settings, OWNER, REPO, REPO_RKEY, None, "delete")

    [repo] = await repos(sessions)
    assert (repo.source, repo.rkey, repo.collaborators) == ("cli", REPO_RKEY, ["did:plc:x"])


async def test_a_collaborator_granted_twice_keeps_rights_until_both_records_are_deleted(sessions, settings):
    uri = f"at://{OWNER}/{REPO}/{REPO_RKEY}"
    await apply(sessions, settings, OWNER, REPO, REPO_RKEY, repo_record())
    await apply(sessions, settings, OWNER, COLLABORATOR, "3lbcollab0001", {"subject": COLLAB, "repo": uri})
    await apply(sessions, settings, OWNER, COLLABORATOR, "3lbcollab0002", {"subject": COLLAB, "repo": uri})

    await apply(sessions, settings, OWNER, COLLABORATOR, "3lbcollab0001", None, "delete")
    assert (await repos(sessions))[0].collaborators == [COLLAB]
    await apply(sessions, settings, OWNER, COLLABORATOR, "3lbcollab0002", None, "delete")
    assert (await repos(sessions))[0].collaborators == []


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"kind": "commit"}',
        '{"time_us": "1", "kind": "commit"}',
        '{"time_us": 5, "kind": "commit", "did": "did:plc:a", "commit": {"operation": "create",'
        ' "collection": "sh.tangled.repo", "rkey": "x"}}',
        '{"time_us": 5, "kind": "commit", "did": "did:plc:a", "commit": {"operation": "explode",'
        ' "collection": "sh.tangled.repo", "rkey": "x", "record": {}}}',
        "[" * 100_000,
    ],
)
def test_refuses_frames_that_are_not_jetstream_events(frame):
    with pytest.raises((ValueError, RecursionError)):
        parse_frame(frame)


def test_reads_a_delete_without_a_record_and_an_identity_event_as_a_time_only():
    delete = '{"did": "did:plc:a", "time_us": 7, "kind": "commit", "commit": {"operation": "delete",'
    delete += ' "collection": "sh.tangled.repo", "rkey": "3lb"}}'
    assert parse_frame(delete) == (7, RecordChange("did:plc:a", REPO, "3lb", "delete", None))
    assert parse_frame('{"did": "did:plc:a", "time_us": 8, "kind": "identity", "identity": {}}') == (8, None)


def test_asks_jetstream_for_tangleds_collections_and_resumes_at_the_cursor():
    url = subscribe_url("wss://jetstream.example.com/subscribe", cursor=123)
    assert url == (
        "wss://jetstream.example.com/subscribe?wantedCollections=sh.tangled.spindle.member"
        "&wantedCollections=sh.tangled.repo&wantedCollections=sh.tangled.repo.collaborator"
        "&wantedCollections=sh.tangled.repo.pull&cursor=123"
    )


async def test_a_collaborator_record_may_name_the_repo_by_its_own_did_before_or_after_it_is_served(
    sessions, settings
):
    repo_did = "did:plc:repoaaaaaaaaaaaaaaaaaaaa"
    grant = {"subject": COLLAB, "repo": repo_did}
    await apply(sessions, settings, OWNER, COLLABORATOR, "3lbcollab0001", grant)
    await apply(sessions, settings, OWNER, MEMBER, "3lbmember0001", {"subject": MEMBER_DID, "instance": HOST})
    # A member's record naming the owner's repo by its DID grants nothing: it is not theirs.
    await apply(
        sessions, settings, MEMBER_DID, COLLABORATOR, "3lbcollab0002", {"subject": MEMBER_DID, **grant}
    )

    await apply(sessions, settings, OWNER, REPO, REPO_RKEY, repo_record(repoDid=repo_did))
    [repo] = await repos(sessions)
    assert (repo.repo_did, repo.collaborators) == (repo_did, [COLLAB])

    await apply(sessions, settings, OWNER, COLLABORATOR, "3lbcollab0001", None, "delete")
    await apply(
        sessions, settings, OWNER, COLLABORATOR, "3lbcollab0003", {"subject": MEMBER_DID, "repo": repo_did}
    )
    [repo] = await repos(sessions)
    assert repo.collaborators == [MEMBER_DID]
