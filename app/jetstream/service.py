"""Tangled's records → what this spindle serves: one function per change of a record.

    apply(session=, settings=, change=)   a create, update or delete of one record, from Jetstream
                                          or from a PDS's listRecords (backfill); idempotent

Who counts (as Tangled's spindle decides it, `spindle/ingester.go`):
- `sh.tangled.spindle.member` records count only from the spindle's owner and only when their
  `instance` is our hostname; their `subject` becomes a member.
- `sh.tangled.repo` records count from the owner or a member: `spindle` = our hostname serves the
  repo (source "jetstream", keyed by its author and record key); another value, none, or the
  record's deletion stops serving it. A member removed stops serving every repo of theirs.
- `sh.tangled.repo.collaborator` records count from the owner or a member, and only for a repo
  of their own (the at-uri's DID, or for a repo named by its own DID as 2026 records do, the
  repo record's author, is the record's author): `subject` may then trigger and cancel. They
  are kept whether the repo is served yet or not.

A deletion carries no record: what it removes is found by (did, collection, rkey). Every change
is a put or a delete by that key, so an event seen twice (a replay after a resume) changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings, is_valid_host
from app.jetstream.models import CollaboratorGrant, SpindleMember
from app.repos import service as repos_service
from app.repos.models import Repo
from app.xrpc.lexicon import FORMATS

log = logging.getLogger(__name__)

MEMBER = "sh.tangled.spindle.member"
REPO = "sh.tangled.repo"
COLLABORATOR = "sh.tangled.repo.collaborator"
COLLECTIONS = (MEMBER, REPO, COLLABORATOR)
JETSTREAM_SOURCE = "jetstream"

Operation = Literal["create", "update", "delete"]

_is_did = FORMATS["did"][0]
_is_rkey = FORMATS["record-key"][0]


@dataclass(frozen=True, slots=True)
class RecordChange:
    did: str  # the record's author
    collection: str
    rkey: str
    operation: Operation
    record: dict[str, Any] | None = None  # None for a delete


@dataclass(frozen=True, slots=True)
class Applied:
    """What a change did, in words for the log; `new_member` is a DID whose records to backfill."""

    outcome: str
    new_member: str | None = None


async def is_member(*, session: AsyncSession, settings: Settings, did: str) -> bool:
    """The owner, or the subject of a member record: whose repos may be served."""
    if did == settings.owner:
        return True
    found = await session.scalar(select(SpindleMember.id).where(SpindleMember.subject == did).limit(1))
    return found is not None


async def members(*, session: AsyncSession) -> list[str]:
    """Every member's DID (the owner is not listed)."""
    subjects = await session.scalars(select(SpindleMember.subject).distinct().order_by(SpindleMember.subject))
    return list(subjects)


async def apply(*, session: AsyncSession, settings: Settings, change: RecordChange) -> Applied:
    """Apply one record change; the session is committed."""
    if not _is_did(change.did) or not _is_rkey(change.rkey):
        return Applied("ignored: not a valid DID and record key")
    if change.collection == MEMBER:
        applied = await _member(session, settings, change)
    elif change.collection == REPO:
        applied = await _repo(session, settings, change)
    elif change.collection == COLLABORATOR:
        applied = await _collaborator(session, settings, change)
    else:
        return Applied(f"ignored: {change.collection} is not followed")
    await session.commit()
    return applied


# -- sh.tangled.spindle.member -------------------------------------------------------------------


async def _member(session: AsyncSession, settings: Settings, change: RecordChange) -> Applied:
    if change.did != settings.owner:
        return Applied("ignored: a member record not written by the spindle's owner")
    existing = await session.scalar(
        select(SpindleMember).where(SpindleMember.did == change.did, SpindleMember.rkey == change.rkey)
    )
    record = change.record or {}
    subject = record.get("subject")
    wanted = (
        change.operation != "delete"
        and record.get("instance") == settings.hostname
        and isinstance(subject, str)
        and _is_did(subject)
    )
    if not wanted:
        if existing is None:
            return Applied("ignored: a member record for another spindle, or not a member record")
        removed = existing.subject
        await session.delete(existing)
        await session.flush()
        stopped = await _drop_if_not_member(session, settings, removed)
        return Applied(f"member {removed} removed; {stopped} repo(s) no longer served")
    assert isinstance(subject, str)
    if existing is not None and existing.subject == subject:
        return Applied(f"member {subject} already known")
    was_member = await is_member(session=session, settings=settings, did=subject)
    if existing is not None:
        previous = existing.subject
        existing.subject = subject
        await session.flush()
        await _drop_if_not_member(session, settings, previous)
    else:
        session.add(SpindleMember(did=change.did, rkey=change.rkey, subject=subject))
        await session.flush()
    return Applied(f"member {subject} added", new_member=None if was_member else subject)


async def _drop_if_not_member(session: AsyncSession, settings: Settings, did: str) -> int:
    """Stop serving the Jetstream repos of `did` when it is no longer a member."""
    if await is_member(session=session, settings=settings, did=did):
        return 0
    result = await session.execute(delete(Repo).where(Repo.did == did, Repo.source == JETSTREAM_SOURCE))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- sh.tangled.repo ------------------------------------------------------------------------------


async def _repo(session: AsyncSession, settings: Settings, change: RecordChange) -> Applied:
    served = await session.scalar(
        select(Repo).where(Repo.did == change.did, Repo.rkey == change.rkey, Repo.source == JETSTREAM_SOURCE)
    )
    record = change.record or {}
    if change.operation == "delete" or record.get("spindle") != settings.hostname:
        if served is None:
            return Applied("ignored: a repo that does not pick this spindle")
        await session.delete(served)
        why = "its record was deleted" if change.operation == "delete" else "it picked another spindle"
        return Applied(f"repo {served.did}/{served.name} on {served.knot} no longer served: {why}")
    if not await is_member(session=session, settings=settings, did=change.did):
        return Applied(f"ignored: {change.did} is neither the owner nor a member of this spindle")
    name, knot, repo_did = record.get("name"), record.get("knot"), record.get("repoDid")
    if not isinstance(name, str) or not repos_service.is_valid_repo_name(name):
        return Applied(f"ignored: the repo record's name {str(name)[:100]!r} is not a repo name")
    if not isinstance(knot, str) or not is_valid_host(knot):
        return Applied(f"ignored: the repo record's knot {str(knot)[:300]!r} is not a host")
    if not (isinstance(repo_did, str) and _is_did(repo_did)):
        repo_did = None
    if served is not None:
        served.name, served.knot, served.repo_did = name, knot, repo_did
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()
            return Applied(f"ignored: {knot} {change.did} {name} is already registered by the operator")
        return Applied(f"repo {change.did}/{name} on {knot} served (updated)")
    uri = f"at://{change.did}/{REPO}/{change.rkey}"
    # Grants name the repo by its at-uri, or (2026) by its own DID, then only its owner's count.
    named = CollaboratorGrant.repo_uri == uri
    if repo_did is not None:
        named = or_(named, and_(CollaboratorGrant.repo_uri == repo_did, CollaboratorGrant.did == change.did))
    grants = await session.scalars(select(CollaboratorGrant.subject).where(named).distinct())
    registered = await repos_service.find(session=session, knot=knot, did=change.did, name=name)
    if registered is not None:
        # The operator's registration stays the operator's; it learns its record key and rights.
        registered.rkey = registered.rkey or change.rkey
        registered.repo_did = registered.repo_did or repo_did
        registered.collaborators = sorted(set(registered.collaborators or ()) | set(grants))
        return Applied(f"repo {change.did}/{name} on {knot} was already registered by the operator")
    session.add(
        Repo(
            knot=knot,
            did=change.did,
            name=name,
            owner_did=change.did,
            collaborators=sorted(set(grants)),
            rkey=change.rkey,
            repo_did=repo_did,
            source=JETSTREAM_SOURCE,
        )
    )
    return Applied(f"repo {change.did}/{name} on {knot} served")


# -- sh.tangled.repo.collaborator -----------------------------------------------------------------


async def _collaborator(session: AsyncSession, settings: Settings, change: RecordChange) -> Applied:
    existing = await session.scalar(
        select(CollaboratorGrant).where(
            CollaboratorGrant.did == change.did, CollaboratorGrant.rkey == change.rkey
        )
    )
    if existing is not None:
        # An update may name another subject or repo: the old grant goes first.
        old_ref, old_subject = existing.repo_uri, existing.subject
        await session.delete(existing)
        await session.flush()
        await _revoke(session, change.did, old_ref, old_subject)
    if change.operation == "delete":
        return Applied("collaborator removed" if existing is not None else "ignored: an unknown collaborator")
    record = change.record or {}
    subject, repo = record.get("subject"), record.get("repo")
    if not isinstance(subject, str) or not _is_did(subject) or not isinstance(repo, str):
        return Applied("ignored: a collaborator record without a subject DID and a repo")
    uri = repos_service.parse_repo_uri(repo)
    if uri is not None and uri.did != change.did:
        return Applied(f"ignored: {change.did} granted rights on a repo of {uri.did}")
    if uri is None and not _is_did(repo):
        return Applied("ignored: a collaborator record whose repo is neither an at-uri nor a DID")
    if not await is_member(session=session, settings=settings, did=change.did):
        return Applied(f"ignored: {change.did} is neither the owner nor a member of this spindle")
    ref = str(uri) if uri is not None else repo
    session.add(CollaboratorGrant(did=change.did, rkey=change.rkey, subject=subject, repo_uri=ref))
    served = await _served(session, change.did, ref)
    if served is not None:
        served.collaborators = sorted(set(served.collaborators or ()) | {subject})
        return Applied(f"collaborator {subject} of {ref} added")
    return Applied(f"collaborator {subject} of {ref} kept for when the repo is served")


async def _served(session: AsyncSession, author: str, ref: str) -> Repo | None:
    """The served repo a grant names: by at-uri, or by the repo's own DID when `author` owns it."""
    uri = repos_service.parse_repo_uri(ref)
    if uri is not None:
        return await repos_service.find_by_uri(session=session, uri=uri)
    return await session.scalar(
        select(Repo).where(Repo.repo_did == ref, Repo.did == author).order_by(Repo.id).limit(1)
    )


async def _revoke(session: AsyncSession, author: str, ref: str, subject: str) -> None:
    """Take `subject` off the repo's collaborators unless another grant still names them."""
    still = await session.scalar(
        select(CollaboratorGrant.id)
        .where(
            CollaboratorGrant.repo_uri == ref,
            CollaboratorGrant.subject == subject,
            CollaboratorGrant.did == author,  # only the repo owner's grants count
        )
        .limit(1)
    )
    if still is not None:
        return
    served = await _served(session, author, ref)
    if served is not None and subject in (served.collaborators or ()):
        served.collaborators = sorted(set(served.collaborators) - {subject})
