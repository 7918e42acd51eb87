"""The cache on disk: entries appear whole, leftovers of killed processes go, the ref index survives
damage."""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.engine.actions.store import STALE_SECONDS, ActionStore, entry_name

URL = "https://github.com/acme/hello"
COMMIT = "a" * 40


def built(tmp_path: Path, name: str, content: str) -> Path:
    directory = tmp_path / name
    (directory / "files").mkdir(parents=True)
    (directory / "files" / "action.yml").write_text(content)
    return directory


def test_an_entry_another_process_put_there_first_is_kept(tmp_path: Path) -> None:
    store = ActionStore(tmp_path / "actions")
    store.prepare()
    name = entry_name(URL, COMMIT)
    first = store.insert(name, url=URL, commit=COMMIT, built=built(tmp_path, "one", "first"))
    second = store.insert(name, url=URL, commit=COMMIT, built=built(tmp_path, "two", "second"))
    assert first == second == store.entries / name / "files"
    assert (first / "action.yml").read_text() == "first"
    assert [entry.size for entry in store.scan()] == [len("first")]


def test_removes_what_a_killed_process_left_in_tmp_once_it_is_stale(tmp_path: Path) -> None:
    root = tmp_path / "actions"
    (root / "tmp" / "fetch-old").mkdir(parents=True)
    (root / "tmp" / "fetch-old" / "pack").write_bytes(b"half a pack")
    (root / "tmp" / "fetch-live").mkdir()
    long_ago = time.time() - STALE_SECONDS - 60
    os.utime(root / "tmp" / "fetch-old", (long_ago, long_ago))
    ActionStore(root).prepare()
    assert [path.name for path in (root / "tmp").iterdir()] == ["fetch-live"]


def test_entry_names_are_safe_paths_whatever_the_url(tmp_path: Path) -> None:
    name = entry_name("https://host/../../etc/x y", COMMIT)
    assert "/" not in name and name.endswith(COMMIT)


def test_a_damaged_ref_index_is_read_as_empty_and_rewritten(tmp_path: Path) -> None:
    store = ActionStore(tmp_path / "actions")
    store.prepare()
    store.refs_file.write_text("{not json")
    assert store.recorded(URL, "v1") is None
    store.record(URL, "v1", COMMIT)
    assert store.recorded(URL, "v1") == COMMIT
    assert list(store.tmp.iterdir()) == []
