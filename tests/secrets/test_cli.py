"""`spindle secret set|list|remove`: the operator's way to the same secrets, values from stdin only."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from app import cli
from tests.secrets.conftest import KNOT, OWNER, REPO_DID, REPO_NAME, register_repo

VALUE = "cli-set-value-0192837465"


def test_set_list_and_remove_a_secret_from_the_command_line(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(register_repo(sqlite_url))
    monkeypatch.setenv("SPINDLE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("SPINDLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SPINDLE_OWNER", OWNER)
    where = ["--knot", KNOT, "--repo-did", REPO_DID, "--name", REPO_NAME]
    monkeypatch.setattr("sys.stdin", io.StringIO(VALUE + "\n"))
    assert cli.main(["secret", "set", *where, "API_TOKEN"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("another"))
    assert cli.main(["secret", "set", *where, "API_TOKEN"]) == 1
    assert "key already present" in capsys.readouterr().err
    assert cli.main(["secret", "list", *where]) == 0
    listed = capsys.readouterr().out
    assert "API_TOKEN" in listed and OWNER in listed and VALUE not in listed
    assert cli.main(["secret", "remove", *where, "API_TOKEN"]) == 0
    assert cli.main(["secret", "remove", *where, "API_TOKEN"]) == 1
    assert "key not found" in capsys.readouterr().err
    assert VALUE.encode() not in Path(sqlite_url.split("///", 1)[1]).read_bytes()
