"""The actions cache on disk, under `<data_dir>/actions/`; every method blocks (run it in a thread).

    entries/<entry>/files/       an action repository's files at one commit, never changed once there
    entries/<entry>/meta.json    {"url", "commit", "size"}; the directory's mtime is its last use
    refs.json                    {url: {tag or branch: commit}}: what each ref last resolved to, for
                                 offline mode
    tmp/                         fetches in progress, each in its own directory
    home/                        git's HOME for ls-remote (empty)

An entry appears whole or not at all: it is built under tmp/ and renamed into entries/, and it
leaves by being renamed back into tmp/ before it is deleted. What a killed process left in tmp/ is
removed once it is older than any fetch can take. Past `max_bytes` in all, the least recently used
entries go first (never one a run of this process still holds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.fetch import FETCH_TIMEOUT

STALE_SECONDS = 3 * FETCH_TIMEOUT  # a directory in tmp/ older than this belongs to no live fetch


@dataclass(frozen=True)
class Entry:
    name: str
    url: str
    commit: str
    size: int
    used_at: float


def entry_name(url: str, commit: str) -> str:
    """The directory name of (url, commit): safe as a path, whatever the URL holds."""
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{commit}"


def tree_size(root: Path) -> int:
    """Bytes of every file and link under `root`, links not followed."""
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


class ActionStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries = root / "entries"
        self.tmp = root / "tmp"
        self.home = root / "home"
        self.refs_file = root / "refs.json"
        self._prepared = False

    def prepare(self) -> None:
        """Create the directories and remove what killed processes left in tmp/ (once per process)."""
        if self._prepared:
            return
        for directory in (self.entries, self.tmp, self.home):
            directory.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_SECONDS
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if leftover.lstat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)
        self._prepared = True

    def work_dir(self) -> Path:
        """A new directory of its own under tmp/ for one fetch."""
        self.prepare()
        return Path(tempfile.mkdtemp(prefix=f"fetch-{os.getpid()}-", dir=self.tmp))

    def lookup(self, name: str) -> Path | None:
        """The files of entry `name`, marked as used now; None when it is not in the cache."""
        self.prepare()
        entry = self.entries / name
        files = entry / "files"
        if not files.is_dir():
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)
        return files

    def insert(self, name: str, *, url: str, commit: str, built: Path) -> Path:
        """Move `built` (a directory holding `files/`) into the cache as entry `name`; its files.

        If another process put the same entry there first, theirs is kept and `built` is left for
        the caller to remove."""
        meta = {"url": url, "commit": commit, "size": tree_size(built / "files")}
        (built / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        target = self.entries / name
        try:
            os.rename(built, target)  # fails if the target exists (and is not empty)
        except OSError:
            if not (target / "files").is_dir():
                raise
        os.utime(target)
        return target / "files"

    def scan(self) -> list[Entry]:
        """Every entry, least recently used first."""
        found = []
        for entry in self.entries.iterdir():
            try:
                meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
                used_at = entry.stat().st_mtime
                found.append(Entry(entry.name, meta["url"], meta["commit"], int(meta["size"]), used_at))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not one of ours, or going away
        return sorted(found, key=lambda entry: entry.used_at)

    def evict(self, *, max_bytes: int, keep: set[str]) -> list[Entry]:
        """Remove least recently used entries (not in `keep`) until the cache holds at most `max_bytes`."""
        self.prepare()
        entries = self.scan()
        total = sum(entry.size for entry in entries)
        removed = []
        for entry in entries:
            if total <= max_bytes:
                break
            if entry.name in keep:
                continue
            trash = Path(tempfile.mkdtemp(prefix="evicted-", dir=self.tmp))
            try:
                os.rename(self.entries / entry.name, trash / entry.name)
            except OSError:
                continue  # another process removed it
            finally:
                shutil.rmtree(trash, ignore_errors=True)
            total -= entry.size
            removed.append(entry)
        if removed:
            gone = {(entry.url, entry.commit) for entry in removed}
            refs = self._read_refs()
            for url, names in refs.items():
                refs[url] = {ref: commit for ref, commit in names.items() if (url, commit) not in gone}
            self._write_refs({url: names for url, names in refs.items() if names})
        return removed

    def recorded(self, url: str, ref: str) -> str | None:
        """The commit `ref` of `url` resolved to when it was last fetched."""
        commit = self._read_refs().get(url, {}).get(ref)
        return commit if isinstance(commit, str) else None

    def record(self, url: str, ref: str, commit: str) -> None:
        refs = self._read_refs()
        if refs.get(url, {}).get(ref) == commit:
            return
        refs.setdefault(url, {})[ref] = commit
        self._write_refs(refs)

    def _read_refs(self) -> dict[str, dict[str, str]]:
        try:
            data: Any = json.loads(self.refs_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {url: names for url, names in data.items() if isinstance(names, dict)}

    def _write_refs(self, refs: dict[str, dict[str, str]]) -> None:
        self.prepare()
        descriptor, temporary = tempfile.mkstemp(prefix="refs-", suffix=".json", dir=self.tmp)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(refs, file, indent=1, sort_keys=True)
        os.replace(temporary, self.refs_file)
