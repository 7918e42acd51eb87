"""Registering, listing and removing the repos this spindle serves."""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def check_rights(
    repo: Repo | None, *, spindle_owner: str | None, actor: str, knot: str, did: str, name: str
) -> Repo:
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
