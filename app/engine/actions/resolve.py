"""From a step's `uses: owner/repo[/path]@ref` to the action's files on the host and its definition.

    cache = ActionCache(settings)                     # one per process
    async with cache.resolver() as resolver:          # one per run
        action = await resolver.fetch(uses)           # a RepositoryAction → FetchedAction

Where from: `<SPINDLE_ACTIONS_URL>/<owner>/<repo>`, or `https://host/<owner>/<repo>` when the
reference names a host. A host named in a workflow is fetched from by the spindle, not by the job,
so outside dev mode it must resolve to public addresses only (the job's network policy keeps jobs
away from this host and its LAN; this stops a workflow getting there through us): git is pinned to
the addresses checked and follows no redirects. SPINDLE_ACTIONS_URL is the operator's and is trusted.

Which commit: a full commit id as it is; a tag or branch resolved with `git ls-remote` once per
run (a RunResolver), so every step of a run that names `v4` gets the same commit even if the tag
moves meanwhile. Offline (SPINDLE_ACTIONS_OFFLINE), a tag or branch is what it last resolved to
here, and only cached commits are served.

The files: fetched once per (url, commit) per process (concurrent requests wait for the first),
kept in the cache (store.py) and shared by runs: read them, never write to them. A run holds the
entries it fetched until its resolver is closed, so eviction does not take them away while the
runner streams them into the job's container.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from app.config import Settings
from app.engine.actions.definition import ActionDefinition, load_definition
from app.engine.actions.exceptions import ActionUnavailable
from app.engine.actions.git import SHORT_COMMIT_RE, GitFailed, Remote, fetch_files, is_full_commit, ls_remote
from app.engine.actions.store import ActionStore, entry_name
from app.identity.resolver import HostResolver, system_resolve_host
from app.identity.web import is_public_address
from app.workflows.uses import RepositoryAction

# What git refuses in a ref name (git-check-ref-format), and a leading "-" that would read as an option.
_BAD_REF = re.compile(r"^-|\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|^/|/$|//|\.lock$|\.$")


@dataclass(frozen=True)
class FetchedAction:
    uses: RepositoryAction
    url: str  # the repository, <server>/<owner>/<repo>
    commit: str
    directory: Path  # the repository's files at `commit` (shared: read only)
    definition: ActionDefinition

    @property
    def action_directory(self) -> Path:
        """The action's own directory: `directory`, or the path the reference names in it."""
        return self.directory / self.uses.path if self.uses.path else self.directory


class ActionCache:
    """Action repositories fetched on the host, by (url, commit), bounded by SPINDLE_ACTIONS_CACHE_MB."""

    def __init__(self, settings: Settings, *, resolve_host: HostResolver = system_resolve_host) -> None:
        self.actions_url = settings.actions_url.rstrip("/")
        self.offline = settings.actions_offline
        self.dev = settings.dev
        self.max_bytes = settings.actions_cache_mb * 1024 * 1024
        self.store = ActionStore(settings.data_dir / "actions")
        self._resolve_host = resolve_host
        # One lock per entry being fetched (gone once nobody waits on it), one for the store's
        # bookkeeping: a lookup and its pin never interleave with an eviction.
        self._fetching: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._store_lock = asyncio.Lock()
        self._pins: Counter[str] = Counter()

    def resolver(self) -> RunResolver:
        """A resolver for one run: its tags and branches resolve once; close it when the run ends."""
        return RunResolver(self)

    async def remote(self, uses: RepositoryAction) -> Remote:
        """Where `uses` is fetched from; a host the workflow names is checked (see the module docstring)."""
        server = (uses.server or self.actions_url).rstrip("/")
        url = f"{server}/{uses.owner}/{uses.repo}"
        if uses.server is None or server == self.actions_url or self.offline:
            return Remote(url)
        parts = urlsplit(server)
        host, port = parts.hostname or "", parts.port or 443
        try:
            addresses = [ipaddress.ip_address(a) for a in await self._resolve_host(host, port)]
        except (OSError, ValueError):
            addresses = []
        if not addresses:
            raise ActionUnavailable(uses.text, f"cannot be fetched from {url}: the host cannot be resolved")
        if not self.dev:
            for address in addresses:
                if not is_public_address(address):
                    raise ActionUnavailable(
                        uses.text,
                        f"cannot be fetched from {url}: {host} has the address {address}, which is not "
                        "public (actions are fetched only from public hosts outside SPINDLE_DEV)",
                    )
        config = ["http.followRedirects=false"]
        try:
            ipaddress.ip_address(host)
        except ValueError:  # a name, not an address: git connects only to the addresses checked
            pinned = ",".join(f"[{a}]" if a.version == 6 else str(a) for a in addresses)
            config.append(f"http.curloptResolve={host}:{port}:{pinned}")
        return Remote(url, tuple(config))

    async def files(
        self, remote: Remote, commit: str, *, action: str, ref: str | None, held: set[str]
    ) -> Path:
        """The files of `commit` of `remote`, from the cache or fetched into it; the entry is added to
        `held` (a resolver's) and kept from eviction until released."""
        name = entry_name(remote.url, commit)
        lock = self._fetching.get(name)
        if lock is None:
            lock = self._fetching[name] = asyncio.Lock()
        async with lock:
            async with self._store_lock:
                found = await asyncio.to_thread(self.store.lookup, name)
                if found is not None:
                    self._hold(name, held)
                    return found
            if self.offline:
                raise ActionUnavailable(
                    action,
                    f"commit {commit} of {remote.url} is not in the cache, and SPINDLE_ACTIONS_OFFLINE "
                    "forbids fetching it",
                )
            work = await asyncio.to_thread(self.store.work_dir)
            try:
                await fetch_files(remote, commit, ref=ref, work=work / "git", files=work / "entry" / "files")
                async with self._store_lock:
                    found = await asyncio.to_thread(
                        self.store.insert, name, url=remote.url, commit=commit, built=work / "entry"
                    )
                    self._hold(name, held)
            except GitFailed as exc:
                raise ActionUnavailable(action, f"cannot be fetched from {remote.url}: {exc}") from None
            finally:
                # Also when cancelled: a half-fetched repository never stays behind.
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))
        async with self._store_lock:
            keep = {held_name for held_name, count in self._pins.items() if count > 0}
            await asyncio.to_thread(self.store.evict, max_bytes=self.max_bytes, keep=keep)
        return found

    def _hold(self, name: str, held: set[str]) -> None:
        if name not in held:
            held.add(name)
            self._pins[name] += 1

    def release(self, held: set[str]) -> None:
        """Entries a resolver held may be evicted again."""
        for name in held:
            self._pins[name] -= 1
            if self._pins[name] <= 0:
                del self._pins[name]
        held.clear()

    async def recorded(self, url: str, ref: str) -> str | None:
        async with self._store_lock:
            return await asyncio.to_thread(self.store.recorded, url, ref)

    async def record(self, url: str, ref: str, commit: str) -> None:
        async with self._store_lock:
            await asyncio.to_thread(self.store.record, url, ref, commit)


class RunResolver:
    """One run's view of actions: each tag or branch resolves to one commit for the whole run."""

    def __init__(self, cache: ActionCache) -> None:
        self.cache = cache
        self._commits: dict[tuple[str, str], tuple[str, str | None]] = {}  # (url, ref) → (commit, ref name)
        self._resolving: dict[tuple[str, str], asyncio.Lock] = {}
        self._held: set[str] = set()
        self._recorded: set[tuple[str, str]] = set()

    async def __aenter__(self) -> RunResolver:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """The run is over: the entries it fetched may be evicted."""
        self.cache.release(self._held)

    async def fetch(self, uses: RepositoryAction) -> FetchedAction:
        """The action `uses` names: its repository's files at the run's commit, and its definition."""
        remote = await self.cache.remote(uses)
        commit, ref_name = await self.commit(uses, remote)
        directory = await self.cache.files(remote, commit, action=uses.text, ref=ref_name, held=self._held)
        if ref_name is not None and (remote.url, uses.ref) not in self._recorded:
            # Asked of the server and now in the cache: what offline mode will use for this ref.
            await self.cache.record(remote.url, uses.ref, commit)
            self._recorded.add((remote.url, uses.ref))
        definition = await asyncio.to_thread(load_definition, directory, uses.path, action=uses.text)
        return FetchedAction(
            uses=uses, url=remote.url, commit=commit, directory=directory, definition=definition
        )

    async def commit(self, uses: RepositoryAction, remote: Remote) -> tuple[str, str | None]:
        """The commit `uses.ref` names in this run, and the ref it came from (None for a commit id)."""
        ref = uses.ref
        if is_full_commit(ref):
            return ref, None
        if _BAD_REF.search(ref):
            raise ActionUnavailable(uses.text, f"{ref!r} is not a tag, branch or full commit id")
        key = (remote.url, ref)
        lock = self._resolving.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._commits:
                self._commits[key] = await self._resolve(uses, remote)
        return self._commits[key]

    async def _resolve(self, uses: RepositoryAction, remote: Remote) -> tuple[str, str | None]:
        ref = uses.ref
        if self.cache.offline:
            commit = await self.cache.recorded(remote.url, ref)
            if commit is None:
                raise ActionUnavailable(
                    uses.text,
                    f"{ref} of {remote.url} was never fetched here, and SPINDLE_ACTIONS_OFFLINE forbids "
                    "asking the server",
                )
            return commit, None
        try:
            found = await ls_remote(remote, ref, home=await asyncio.to_thread(self._home))
        except GitFailed as exc:
            raise ActionUnavailable(uses.text, f"cannot be fetched from {remote.url}: {exc}") from None
        if found is None:
            hint = ""
            if SHORT_COMMIT_RE.fullmatch(ref):
                hint = " (a commit is named by its full id, as on GitHub)"
            raise ActionUnavailable(uses.text, f"{remote.url} has no tag or branch {ref}{hint}")
        return found

    def _home(self) -> Path:
        self.cache.store.prepare()
        return self.cache.store.home
