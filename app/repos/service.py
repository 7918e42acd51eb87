"""Registering, listing and removing the repos this spindle serves."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.repos.models import Repo


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
