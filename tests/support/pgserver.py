"""A throwaway PostgreSQL server of a test's own, which the test may stop and start again.

with PgServer() as pg:                      # scripts/postgres: initdb + start on a free port
    url = pg.database()                     # a fresh, migrated database on it
    pg.stop()                               # immediate shutdown: connections drop at once
    pg.start()                              # the same data directory and port again
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.db import POSTGRES_ENV, new_database

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
    return versions[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PgServer:
    def __init__(self) -> None:
        # Directly under /tmp: the server runs as the postgres user, which cannot enter a pytest
        # tmp_path (0700, owned by root).
        self.dir = Path(tempfile.mkdtemp(prefix="spindle-pg-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.url: str | None = None

    @property
    def port(self) -> int:
        assert self.url is not None
        port = make_url(self.url).port
        assert port is not None
        return port

    def create(self) -> PgServer:
        out = subprocess.run(
            [str(ROOT / "scripts" / "postgres"), str(self.dir)], capture_output=True, text=True, check=True
        )
        self.url = out.stdout.strip().splitlines()[-1]
        assert re.match(r"^postgresql\+asyncpg://", self.url), self.url
        return self

    def database(self) -> str:
        """A new, migrated database on this server."""
        previous = os.environ.get(POSTGRES_ENV)
        os.environ[POSTGRES_ENV] = self.url or ""
        try:
            return new_database("postgres", self.dir)
        finally:
            if previous is None:
                del os.environ[POSTGRES_ENV]
            else:
                os.environ[POSTGRES_ENV] = previous

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(_pg_bin() / "pg_ctl"), "-D", str(self.dir / "data"), *args]),
            capture_output=True,
            check=True,
        )

    def stop(self) -> None:
        """Immediate shutdown, as a crash or a network cut looks to clients."""
        self._ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        )
        self._ctl("-l", str(self.dir / "server.log"), "-w", "-o", options, "start")

    def destroy(self) -> None:
        subprocess.run(
            [str(ROOT / "scripts" / "postgres-stop"), str(self.dir)], capture_output=True, check=False
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.create()

    def __exit__(self, *_: object) -> None:
        self.destroy()
