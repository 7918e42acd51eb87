"""Registering, listing and removing the repos this spindle serves."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.repos.models import Repo
from app.xrpc.errors import Forbidden

log = logging.getLogger(__name__)

# Tangled repo names: letters, digits, '.', '_' and '-' (a path segment on the knot), not '.' or '..'.
REPO_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}\Z")


def is_valid_repo_name(name: str) -> bool:
    return REPO_NAME_RE.match(name) is not None and name not in (".", "..")


class RepoExists(Exception):
    pass


async def add(
    *,
    session: AsyncSession,
    knot: str,
    did: str,
    name: str,
    owner_did: str,
    collaborators: Sequence[str],
    rkey: str | None = None,
    source: str = "cli",
) -> Repo:
    """Register (knot, did, name); a second registration of the same key is refused."""
    repo = Repo(
        knot=knot,
        did=did,
        name=name,
        owner_did=owner_did,
        collaborators=sorted(set(collaborators)),
        rkey=rkey,
        source=source,
    )
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


async def find_pushed(
    *, session: AsyncSession, knot: str, owner_did: str | None, name: str | None, repo_did: str | None
) -> Repo | None:
    """The served repo a knot's ref update names: by (knot, owner DID, name) from older knots, or
    by the repo's own DID (registered as the repo's `repo_did`, or as its DID) from current ones."""
    if owner_did and name:
        found = await find(session=session, knot=knot, did=owner_did, name=name)
        if found is not None:
            return found
    if repo_did:
        return await session.scalar(
            select(Repo)
            .where(Repo.knot == knot, or_(Repo.repo_did == repo_did, Repo.did == repo_did))
            .order_by(Repo.id)
            .limit(1)
        )
    return None


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

RepoKey = tuple[str, str, str]


class RegistrationCache:
    """Registrations read in the last REGISTRATION_TTL seconds, so that a busy repo's triggers do
    not each read the registry; bounded (the oldest entries go first).

    An entry served in the second half of its life is read again in the background (one read per
    repo at a time), so a repo triggered steadily never misses, and an expiry never sends every
    request in flight to the database at once.
    """

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        ttl: float = REGISTRATION_TTL,
        max_entries: int = REGISTRATION_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[RepoKey, tuple[float, Rights]] = {}
        self._refreshing: dict[RepoKey, asyncio.Task[None]] = {}

    def get(self, *, knot: str, did: str, name: str) -> Rights | None:
        """The rights of (knot, did, name) if they were read less than `ttl` seconds ago."""
        key = (knot, did, name)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, rights = entry
        left = expires_at - self._clock()
        if left <= 0:
            del self._entries[key]
            return None
        if left < self.ttl / 2 and key not in self._refreshing:
            self._refreshing[key] = asyncio.get_running_loop().create_task(
                self._refresh(key), name=f"registration-refresh:{knot}/{did}/{name}"
            )
        return rights

    def put(self, repo: Repo) -> Rights:
        """Remember the rights of a registration just read; they are returned."""
        rights = Rights(repo.owner_did, frozenset(repo.collaborators or ()))
        key = (repo.knot, repo.did, repo.name)
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + self.ttl, rights)
        return rights

    def forget(self, *, knot: str, did: str, name: str) -> None:
        """Drop (knot, did, name): the registry was just read and does not have it any more."""
        self._entries.pop((knot, did, name), None)

    async def settle(self) -> None:
        """Wait for the background re-reads in flight."""
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop the background reads (at shutdown)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh(self, key: RepoKey) -> None:
        knot, did, name = key
        try:
            async with self.sessionmaker() as session:
                repo = await find(session=session, knot=knot, did=did, name=name)
            if repo is None:
                self.forget(knot=knot, did=did, name=name)
            else:
                self.put(repo)
        except Exception as exc:
            # The entry stays until it expires; the next trigger after that reads the registry.
            log.warning("could not re-read the registration of %s/%s on %s: %r", did, name, knot, exc)
        finally:
            self._refreshing.pop(key, None)


RepoT = TypeVar("RepoT", bound=Repo | Rights)


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


# `at://<did>/sh.tangled.repo/<rkey>`: how Tangled names a repo (its record), e.g. in cancelPipeline,
# the secrets methods and sh.tangled.repo.collaborator records.
REPO_COLLECTION = "sh.tangled.repo"
_REPO_URI_RE = re.compile(
    r"^at://(?P<did>did:[a-z]+:[A-Za-z0-9._:%-]{1,2040})/sh\.tangled\.repo/(?P<rkey>[^/]{1,512})\Z"
)
_RKEY_RE = re.compile(r"^[A-Za-z0-9.\-_:~]{1,512}\Z")


@dataclass(frozen=True, slots=True)
class RepoUri:
    did: str
    rkey: str

    def __str__(self) -> str:
        return f"at://{self.did}/{REPO_COLLECTION}/{self.rkey}"


def parse_repo_uri(value: str) -> RepoUri | None:
    """`at://<did>/sh.tangled.repo/<rkey>` split into its parts; None when it is not one."""
    match = _REPO_URI_RE.match(value)
    if match is None or match["rkey"] in (".", "..") or not _RKEY_RE.match(match["rkey"]):
        return None
    return RepoUri(match["did"], match["rkey"])


async def find_by_uri(*, session: AsyncSession, uri: RepoUri) -> Repo | None:
    """The served repo the at-uri names: by its record key (a TID, as Tangled mints them).

    Repos registered before their record key was known (the operator's registry of older
    versions) are also found when the key is their name, which is how 2025 clients built the uri.
    """
    repo = await session.scalar(
        select(Repo).where(Repo.did == uri.did, Repo.rkey == uri.rkey).order_by(Repo.id).limit(1)
    )
    if repo is not None:
        return repo
    return await session.scalar(
        select(Repo)
        .where(Repo.did == uri.did, Repo.name == uri.rkey, Repo.rkey.is_(None))
        .order_by(Repo.id)
        .limit(1)
    )
