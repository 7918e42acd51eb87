"""Adding, listing and removing a served repo's secrets, and opening them for a run.

Rules (Tangled's spindle keeps the same): a key is a shell identifier (`^[A-Za-z_][A-Za-z0-9_]*$`,
at most 50 characters); adding a key that exists is refused ("key already present"), never an
overwrite; a listing never holds a value. Values are sealed with app.secrets.crypto before they
reach the database.

XrpcError
├── InvalidRequest (400): a bad key or value, naming the field
│   ├── InvalidRepo: `repo` is not an at-uri of a repo, or not one this spindle serves
│   └── KeyAlreadyPresent: the key is set already (remove it first)
├── Forbidden (403): neither the repo's owner, a collaborator, nor the spindle's owner
└── NotFound / KeyNotFound (404): removing a key that is not set
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.repos import service as repos_service
from app.repos.models import Repo
from app.runs import trust
from app.runs.trust import Triggered
from app.secrets.crypto import SecretCipher, SecretDecryptError, SecretsKeyError, aad_for
from app.secrets.models import RepoSecret
from app.xrpc.errors import Forbidden, InvalidRequest, NotFound

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_KEY_LENGTH = 50
# sh.tangled.repo.addSecret's maxLength (UTF-8 bytes, as lexicon string lengths count).
MAX_VALUE_BYTES = 200
# `spindle secret set` (the operator) may store what GitHub allows: 48 KiB (a deploy key, a certificate).
MAX_ADMIN_VALUE_BYTES = 48 * 1024


class InvalidRepo(InvalidRequest, status=400):
    """`repo` is not `at://<did>/sh.tangled.repo/<rkey>`, or names no repo this spindle serves."""


class KeyAlreadyPresent(InvalidRequest, status=400):
    """addSecret for a key the repo already has: Tangled's spindle refuses it too."""


class KeyNotFound(NotFound, status=404):
    """removeSecret for a key the repo does not have."""


def _shown(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def check_key(key: object) -> str:
    """`key` if it is a valid secret name; else 400 naming `key`."""
    if not isinstance(key, str) or not key:
        raise InvalidRequest("key: must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"key: must be at most {MAX_KEY_LENGTH} characters, not {len(key)}")
    if not KEY_RE.match(key):
        raise InvalidRequest(
            f"key: {_shown(key)} is not a valid identifier (letters, digits and _, not starting with a digit)"
        )
    return key


def check_value(value: object, *, max_bytes: int = MAX_VALUE_BYTES) -> str:
    """`value` if it may be stored; else 400 naming `value` (and never quoting it)."""
    if not isinstance(value, str):
        raise InvalidRequest("value: must be a string")
    if not value.strip():
        raise InvalidRequest("value: must not be empty")
    if "\0" in value:
        raise InvalidRequest("value: must not contain NUL characters")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise InvalidRequest(f"value: must be at most {max_bytes} bytes in UTF-8, not {size}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("value: is not valid Unicode text") from None
    return value


async def resolve_repo(*, session: AsyncSession, repo: object) -> Repo:
    """The served repo an at-uri names (its record key is a TID, not the repo's name); else 400."""
    if not isinstance(repo, str) or not repo:
        raise InvalidRepo("repo: must be an at-uri string")
    uri = repos_service.parse_repo_uri(repo)
    if uri is None:
        raise InvalidRepo(f"repo: {_shown(repo)} is not a repo at-uri (at://<did>/sh.tangled.repo/<rkey>)")
    found = await repos_service.find_by_uri(session=session, uri=uri)
    if found is None:
        raise InvalidRepo(f"repo: {uri} is not a repo this spindle serves")
    return found


def authorize(repo: Repo, *, actor: str, spindle_owner: str | None) -> Repo:
    """`repo` if `actor` may manage its secrets (owner, collaborator, spindle owner); else 403."""
    if not repo.may_trigger(actor, spindle_owner):
        raise Forbidden(
            f"{actor} is neither the owner nor a collaborator of {repo.did}/{repo.name}, "
            "nor the owner of this spindle"
        )
    return repo


async def add(
    *,
    session: AsyncSession,
    cipher: SecretCipher,
    repo: Repo,
    key: str,
    value: str,
    created_by: str,
) -> RepoSecret:
    """Store `value` sealed under `key`; a key the repo already has is refused (KeyAlreadyPresent)."""
    existing = await session.scalar(
        select(RepoSecret.id).where(RepoSecret.repo_id == repo.id, RepoSecret.key == key)
    )
    if existing is not None:
        raise KeyAlreadyPresent(f"key already present: {key} is set for this repo; remove it first")
    sealed, sealed_by = cipher.encrypt(value, aad=aad_for(repo.id, key))
    secret = RepoSecret(repo_id=repo.id, key=key, sealed=sealed, key_id=sealed_by, created_by=created_by)
    session.add(secret)
    try:
        await session.commit()
    except IntegrityError:
        # Another request added the same key between the check and the commit.
        await session.rollback()
        raise KeyAlreadyPresent(f"key already present: {key} is set for this repo; remove it first") from None
    return secret


async def remove(*, session: AsyncSession, repo: Repo, key: str) -> None:
    """Remove `key` from the repo's secrets; KeyNotFound when it has no such key."""
    result = await session.execute(
        delete(RepoSecret).where(RepoSecret.repo_id == repo.id, RepoSecret.key == key)
    )
    await session.commit()
    if not result.rowcount:  # type: ignore[attr-defined]
        raise KeyNotFound(f"key not found: {key} is not set for this repo")


async def list_for(*, session: AsyncSession, repo: Repo) -> Sequence[RepoSecret]:
    """The repo's secrets by key (rows carry sealed values only; callers show no value)."""
    return (
        await session.scalars(
            select(RepoSecret).where(RepoSecret.repo_id == repo.id).order_by(RepoSecret.key)
        )
    ).all()


async def open_for_repo(
    *, session: AsyncSession, cipher: SecretCipher, knot: str, did: str, name: str
) -> dict[str, str]:
    """Every secret of the served repo (knot, did, name), opened: what `secrets.*` of a run holds.

    A value that does not open raises SecretDecryptError naming its key (never its value)."""
    # One read, secrets joined to their registration: the engine starts runs beside the trigger's
    # warm path, which reads no registration (tests/runs/test_trigger_warm_path.py).
    rows = await session.execute(
        select(RepoSecret)
        .join(Repo, Repo.id == RepoSecret.repo_id)
        .where(Repo.knot == knot, Repo.did == did, Repo.name == name)
        .order_by(RepoSecret.key)
    )
    values: dict[str, str] = {}
    for row in rows.scalars():
        try:
            values[row.key] = cipher.decrypt(
                row.sealed, aad=aad_for(row.repo_id, row.key), stored_key_id=row.key_id
            )
        except SecretDecryptError as exc:
            raise SecretDecryptError(
                f"the secret {row.key} of {did}/{name} cannot be opened: {exc}"
            ) from None
    return values


async def check_stored_key(*, session: AsyncSession, cipher: SecretCipher) -> None:
    """At start-up: the stored values were sealed with the configured key; else SecretsKeyError."""
    stored = set(await session.scalars(select(RepoSecret.key_id).distinct()))
    if not stored:
        return
    try:
        current = cipher.current_key_id()
    except SecretsKeyError:
        raise
    if current is None:
        raise SecretsKeyError(
            f"secrets are stored (sealed by {len(stored)} key(s)) but no key is configured: "
            "set SPINDLE_SECRETS_KEY "
            f"to the key they were stored with, or restore {cipher.key_file}"
        )
    if stored != {current}:
        others = ", ".join(sorted(stored - {current}))
        raise SecretsKeyError(
            f"{cipher.source} (key id {current}) is not the key the stored secrets were sealed with "
            f"(key id {others}): set SPINDLE_SECRETS_KEY to that key, or re-seal them with "
            "`spindle secret rekey` (docs/secrets.md)"
        )


async def rekey(*, session: AsyncSession, old: SecretCipher, new: SecretCipher) -> int:
    """Re-seal every stored value sealed with `old`'s key under `new`'s key; the count re-sealed."""
    old_id = old.current_key_id()
    if old_id is None:
        raise SecretsKeyError("the old key is not set")
    count = 0
    for row in await session.scalars(select(RepoSecret).where(RepoSecret.key_id == old_id)):
        aad = aad_for(row.repo_id, row.key)
        value = old.decrypt(row.sealed, aad=aad, stored_key_id=row.key_id)
        row.sealed, row.key_id = new.encrypt(value, aad=aad)
        count += 1
    await session.commit()
    return count


@dataclass(frozen=True)
class RunSecrets:
    """What `secrets.*` of one run holds, and why it is empty when it was withheld."""

    values: dict[str, str] = field(default_factory=dict, repr=False)
    withheld: str | None = None


async def for_run(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    cipher: SecretCipher,
    pipeline: Triggered,
    knot: str,
    name: str,
) -> RunSecrets:
    """The secrets a run of `pipeline` gets: its repo's, unless its code is not the repo's own."""
    if not trust.code_is_from_repo(pipeline):
        return RunSecrets(
            withheld="this run's code does not come from the repo itself (a fork's pull request): "
            "it gets no secrets"
        )
    async with sessionmaker() as session:
        values = await open_for_repo(
            session=session, cipher=cipher, knot=knot, did=pipeline.repo_did, name=name
        )
    return RunSecrets(values=values)
