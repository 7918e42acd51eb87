"""Registering, listing and removing the repos this spindle serves."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.repos.models import Repo
from app.xrpc.errors import Forbidden

# Tangled repo names: letters, digits, '.', '_' and '-' (a path segment on the knot), not '.' or '..'.
REPO_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}\Z")


def is_valid_repo_name(name: str) -> bool:
    return REPO_NAME_RE.match(name) is not None and name not in (".", "..")


class RepoExists(Exception):
    pass


async def add(
    *, session: AsyncSession, knot: str, did: str, name: str, owner_did: str, collaborators: Sequence[str]
) -> Repo:
    """Register (knot, did, name); a second registration of the same key is refused."""
    repo = Repo(knot=knot, did=did, name=name, owner_did=owner_did, collaborators=sorted(set(collaborators)))
    session.add(repo)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise RepoExists(f"{knot} {did} {name} is already registered") from exc
    return repo


async def list_all(*, session: AsyncSession) -> Sequence[Repo]:
    """Every registered repo, by knot then DID then name."""
    result = await session.scalars(select(Repo).order_by(Repo.knot, Repo.did, Repo.name))
    return result.all()


async def remove(*, session: AsyncSession, knot: str, did: str, name: str) -> bool:
    """Unregister; True when something was removed."""
    result = await session.execute(delete(Repo).where(Repo.knot == knot, Repo.did == did, Repo.name == name))
    await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def find(*, session: AsyncSession, knot: str, did: str, name: str) -> Repo | None:
    """The registration for exactly (knot, did, name), if any."""
    return await session.scalar(select(Repo).where(Repo.knot == knot, Repo.did == did, Repo.name == name))


async def knots(*, session: AsyncSession) -> list[str]:
    """Every distinct registered knot."""
    return list(await session.scalars(select(Repo.knot).distinct().order_by(Repo.knot)))


@dataclass(frozen=True, slots=True)
class Rights:
    """Who may trigger a registered repo, as read from its registration."""

    owner_did: str
    collaborators: frozenset[str]

    def may_trigger(self, actor: str, spindle_owner: str | None) -> bool:
        return actor == self.owner_did or actor in self.collaborators or actor == spindle_owner


# How long a registration read from the database is trusted: `spindle repo remove` (another
# process) takes effect on triggers within this time. Unregistered repos are never cached, so a
# `spindle repo add` takes effect at once.
REGISTRATION_TTL = 1.0
REGISTRATION_CACHE_SIZE = 10_000


class RegistrationCache:
    """Registrations read in the last REGISTRATION_TTL seconds, so that a busy repo's triggers
    do not each read the registry; bounded (the oldest entries go first)."""

    def __init__(
        self,
        *,
        ttl: float = REGISTRATION_TTL,
        max_entries: int = REGISTRATION_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[tuple[str, str, str], tuple[float, Rights]] = {}

    def get(self, *, knot: str, did: str, name: str) -> Rights | None:
        """The rights of (knot, did, name) if they were read less than `ttl` seconds ago."""
        entry = self._entries.get((knot, did, name))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[(knot, did, name)]
            return None
        return entry[1]

    def put(self, repo: Repo) -> Rights:
        """Remember the rights of a registration just read; they are returned."""
        rights = Rights(repo.owner_did, frozenset(repo.collaborators or ()))
        key = (repo.knot, repo.did, repo.name)
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + self.ttl, rights)
        return rights


RepoT = TypeVar("RepoT", Repo, Rights)


def check_rights(
    repo: RepoT | None, *, spindle_owner: str | None, actor: str, knot: str, did: str, name: str
) -> RepoT:
    """`repo` (the registration found for knot, did, name) if `actor` may trigger it; else 403."""
    if repo is None:
        raise Forbidden(f"the repo {did}/{name} on knot {knot} is not registered with this spindle")
    if not repo.may_trigger(actor, spindle_owner):
        raise Forbidden(f"{actor} is neither the owner nor a collaborator of {did}/{name}")
    return repo


async def authorize(
    *, session: AsyncSession, spindle_owner: str | None, actor: str, knot: str, did: str, name: str
) -> Repo:
    """The registration of exactly (knot, did, name) if `actor` may trigger it; else 403 Forbidden."""
    repo = await find(session=session, knot=knot, did=did, name=name)
    return check_rights(repo, spindle_owner=spindle_owner, actor=actor, knot=knot, did=did, name=name)
