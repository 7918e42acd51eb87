"""Fresh, migrated databases for tests: a SQLite file, or a new database on a real PostgreSQL server.

The PostgreSQL server is the one `scripts/test` starts (SPINDLE_TEST_POSTGRES_URL, an asyncpg URL
of a role allowed to CREATE DATABASE); each test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app import migrate

POSTGRES_ENV = "SPINDLE_TEST_POSTGRES_URL"


def postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


async def _admin(sql: str) -> None:
    url = postgres_admin_url()
    assert url, f"{POSTGRES_ENV} is not set: run the tests with scripts/test, which starts PostgreSQL"
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def new_database(kind: str, tmp_path: Path) -> str:
    """Create an empty database of `kind` ('sqlite' | 'postgres'), migrate it, return its URL."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'spindle.db'}"
    else:
        name = "spindle_test_" + secrets.token_hex(6)
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        url = make_url(postgres_admin_url()).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    return url


def drop_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
