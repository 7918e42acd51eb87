"""Secret values at rest: sealed in both databases, opened with the right key only, kept across restarts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from app.context import AppContext
from app.database import create_engine, create_sessionmaker
from app.repos.models import Repo
from app.secrets import service
from app.secrets.crypto import KEY_FILE_NAME, SecretCipher, SecretDecryptError, SecretsKeyError
from app.secrets.models import RepoSecret
from tests.secrets.conftest import KNOT, REPO_DID, REPO_NAME, fresh_key, plain_settings, register_repo

VALUE = "correct-horse-battery-staple-8841"


async def _add(url: str, cipher: SecretCipher, key: str = "DEPLOY_TOKEN", value: str = VALUE) -> None:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            repo = await session.scalar(select(Repo).where(Repo.did == REPO_DID))
            assert repo is not None
            await service.add(
                session=session, cipher=cipher, repo=repo, key=key, value=value, created_by=REPO_DID
            )
    finally:
        await engine.dispose()


async def _open(url: str, cipher: SecretCipher) -> dict[str, str]:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await service.open_for_repo(
                session=session, cipher=cipher, knot=KNOT, did=REPO_DID, name=REPO_NAME
            )
    finally:
        await engine.dispose()


async def test_stored_rows_hold_no_value_in_clear_on_either_database(
    database_url: str, tmp_path: Path
) -> None:
    await register_repo(database_url)
    cipher = SecretCipher.from_settings(plain_settings(database_url, tmp_path / "data"))
    await _add(database_url, cipher)
    engine = create_engine(database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            row = (await session.scalars(select(RepoSecret))).one()
            assert VALUE.encode() not in row.sealed
            assert row.key == "DEPLOY_TOKEN" and row.created_by == REPO_DID and row.created_at is not None
    finally:
        await engine.dispose()
    assert await _open(database_url, cipher) == {"DEPLOY_TOKEN": VALUE}


async def test_the_sqlite_file_does_not_contain_the_value(sqlite_url: str, tmp_path: Path) -> None:
    await register_repo(sqlite_url)
    await _add(sqlite_url, SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path / "data")))
    database_file = Path(sqlite_url.split("///", 1)[1])
    stored = b"".join(p.read_bytes() for p in database_file.parent.glob(database_file.name + "*"))
    assert b"DEPLOY_TOKEN" in stored  # the row is there
    assert VALUE.encode() not in stored


async def test_key_file_is_created_with_mode_0600_on_first_use_and_reused_after_a_restart(
    sqlite_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    await register_repo(sqlite_url)
    settings = plain_settings(sqlite_url, data_dir)
    assert not (data_dir / KEY_FILE_NAME).exists()
    await _add(sqlite_url, SecretCipher.from_settings(settings))
    key_file = data_dir / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A new process: a new cipher reading the same key file opens what the first one sealed.
    assert await _open(sqlite_url, SecretCipher.from_settings(plain_settings(sqlite_url, data_dir))) == {
        "DEPLOY_TOKEN": VALUE
    }


async def test_key_from_the_environment_is_used_and_no_key_file_is_written(
    sqlite_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    await register_repo(sqlite_url)
    key = fresh_key()
    await _add(sqlite_url, SecretCipher.from_settings(plain_settings(sqlite_url, data_dir, secrets_key=key)))
    assert not (data_dir / KEY_FILE_NAME).exists()
    url_safe = key.replace("+", "-").replace("/", "_").rstrip("=")
    cipher = SecretCipher.from_settings(plain_settings(sqlite_url, data_dir, secrets_key=url_safe))
    assert await _open(sqlite_url, cipher) == {"DEPLOY_TOKEN": VALUE}


@pytest.mark.parametrize(
    ("key", "problem"), [("not base64 at all!", "is not base64"), ("c2hvcnQ=", "not 5 bytes")]
)
def test_malformed_key_is_refused_naming_the_variable_and_not_echoing_it(
    sqlite_url: str, tmp_path: Path, key: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        plain_settings(sqlite_url, tmp_path, secrets_key=key)
    assert "SPINDLE_SECRETS_KEY" in str(caught.value) and problem in str(caught.value)
    assert key not in str(caught.value)


async def test_service_refuses_to_start_with_another_key_naming_spindle_secrets_key(
    sqlite_url: str, tmp_path: Path
) -> None:
    await register_repo(sqlite_url)
    await _add(
        sqlite_url, SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path, secrets_key=fresh_key()))
    )
    ctx = AppContext(plain_settings(sqlite_url, tmp_path, secrets_key=fresh_key()))
    try:
        with pytest.raises(SecretsKeyError, match="SPINDLE_SECRETS_KEY .* is not the key the stored secrets"):
            await ctx.start()
    finally:
        await ctx.engine.dispose()


async def test_service_refuses_to_start_when_secrets_are_stored_and_no_key_is_left(
    sqlite_url: str, tmp_path: Path
) -> None:
    await register_repo(sqlite_url)
    await _add(sqlite_url, SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path / "data")))
    (tmp_path / "data" / KEY_FILE_NAME).unlink()
    ctx = AppContext(plain_settings(sqlite_url, tmp_path / "data"))
    try:
        with pytest.raises(SecretsKeyError, match="no key is configured: set SPINDLE_SECRETS_KEY"):
            await ctx.start()
    finally:
        await ctx.engine.dispose()


async def test_key_file_readable_by_others_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    await register_repo(sqlite_url)
    cipher = SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path / "data"))
    await _add(sqlite_url, cipher)
    (tmp_path / "data" / KEY_FILE_NAME).chmod(0o644)
    with pytest.raises(SecretsKeyError, match="readable by other users"):
        await _open(sqlite_url, SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path / "data")))


async def test_a_row_moved_to_another_key_name_does_not_open(sqlite_url: str, tmp_path: Path) -> None:
    await register_repo(sqlite_url)
    cipher = SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path / "data"))
    await _add(sqlite_url, cipher)
    engine = create_engine(sqlite_url)
    try:
        async with create_sessionmaker(engine)() as session:
            row = (await session.scalars(select(RepoSecret))).one()
            row.key = "OTHER"
            await session.commit()
    finally:
        await engine.dispose()
    with pytest.raises(SecretDecryptError, match="the secret OTHER of .* cannot be opened"):
        await _open(sqlite_url, cipher)


async def test_rekey_reseals_every_value_under_the_new_key(sqlite_url: str, tmp_path: Path) -> None:
    await register_repo(sqlite_url)
    old = SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path, secrets_key=fresh_key()))
    await _add(sqlite_url, old)
    new = SecretCipher.from_settings(plain_settings(sqlite_url, tmp_path, secrets_key=fresh_key()))
    engine = create_engine(sqlite_url)
    try:
        async with create_sessionmaker(engine)() as session:
            assert await service.rekey(session=session, old=old, new=new) == 1
            await service.check_stored_key(session=session, cipher=new)
    finally:
        await engine.dispose()
    assert await _open(sqlite_url, new) == {"DEPLOY_TOKEN": VALUE}
