"""The cache of repo registrations the trigger's warm path authorizes from."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import create_engine, create_sessionmaker
from app.repos import service as repos_service
from app.repos.service import RegistrationCache

KNOT = "knot.example.com"
OWNER = "did:plc:abcdefghijklmnopqrstuvwx"
FRIEND = "did:plc:bcdefghijklmnopqrstuvwxy"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def register(sessions: async_sessionmaker[AsyncSession], *, collaborators: tuple[str, ...] = ()):
    async with sessions() as session:
        return await repos_service.add(
            session=session, knot=KNOT, did=OWNER, name="hello", owner_did=OWNER, collaborators=collaborators
        )


async def remove(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        assert await repos_service.remove(session=session, knot=KNOT, did=OWNER, name="hello")


async def test_serves_a_registration_for_its_ttl_then_forgets_it(sessions):
    clock = Clock()
    cache = RegistrationCache(sessionmaker=sessions, ttl=1.0, clock=clock)
    cache.put(await register(sessions, collaborators=(FRIEND,)))

    rights = cache.get(knot=KNOT, did=OWNER, name="hello")
    clock.now += 1.0
    expired = cache.get(knot=KNOT, did=OWNER, name="hello")

    assert rights is not None and rights.may_trigger(FRIEND, None)
    assert not rights.may_trigger("did:plc:cdefghijklmnopqrstuvwxyz", None)
    assert expired is None
    await cache.close()


async def test_a_removed_repo_is_forgotten_by_the_reread_in_the_second_half_of_its_life(sessions):
    clock = Clock()
    cache = RegistrationCache(sessionmaker=sessions, ttl=1.0, clock=clock)
    cache.put(await register(sessions))
    await remove(sessions)

    clock.now += 0.6
    still = cache.get(knot=KNOT, did=OWNER, name="hello")  # served, and read again behind it
    await cache.settle()

    assert still is not None
    assert cache.get(knot=KNOT, did=OWNER, name="hello") is None
    await cache.close()


async def test_a_repo_triggered_steadily_is_read_again_before_it_expires(sessions):
    clock = Clock()
    cache = RegistrationCache(sessionmaker=sessions, ttl=1.0, clock=clock)
    cache.put(await register(sessions))

    for _ in range(10):
        clock.now += 0.6
        assert cache.get(knot=KNOT, did=OWNER, name="hello") is not None
        await cache.settle()

    await cache.close()


async def test_only_registrations_are_cached_never_their_absence(sessions):
    cache = RegistrationCache(sessionmaker=sessions, ttl=60.0, clock=Clock())

    assert cache.get(knot=KNOT, did=OWNER, name="hello") is None
    repo = await register(sessions)

    assert cache.get(knot=KNOT, did=OWNER, name="hello") is None  # the caller reads the registry
    cache.put(repo)
    assert cache.get(knot=KNOT, did=OWNER, name="hello") is not None
    cache.forget(knot=KNOT, did=OWNER, name="hello")
    assert cache.get(knot=KNOT, did=OWNER, name="hello") is None
    await cache.close()
