"""DID resolution (did:plc, did:web) with a bounded TTL cache that outlives directory outages.

We do not use the atproto SDK's IdResolver: its did:web resolver drops the port (`%3A`), it caches
nothing unless given a cache, it does not bound the size of an answer, and it would fetch whatever
address a did:web names (a server-side request forgery into our network).

Every request's issuer goes through `resolve`, so the hot path is one dict lookup: documents are
cached with their `#atproto` key already parsed into a key object.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from app.config import is_local_host
from app.identity.document import DidDocument, parse_document
from app.identity.exceptions import (
    DidNotFound,
    DirectoryUnavailable,
    ForbiddenHost,
    InvalidDidDocument,
    ResolutionError,
    UnsupportedDid,
)
from app.identity.web import (
    HostRefused,
    HostResolver,
    IPAddress,
    checked_addresses,
    is_public_address,
    parse_did_web,
)
from app.ratelimit import TokenBuckets

log = logging.getLogger(__name__)

# The directory decides which did:plc exist; we only make sure the identifier is safe in a URL path.
PLC_DID_RE = re.compile(r"^did:plc:[a-z0-9]{1,64}\Z")
WELL_KNOWN_PATH = "/.well-known/did.json"


async def system_resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, in its order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


class _Throttled(DirectoryUnavailable):
    """Not asked: this directory had as many look-ups as it gets a minute (not remembered as a
    failure of the DID, which may well exist)."""


class _ConnectFailed(DirectoryUnavailable):
    """No connection to one address: the next address of the host may still work."""


@dataclass(slots=True)
class _Entry:
    document: DidDocument
    fetched_at: float
    forced_at: float | None
    # When a refresh last failed: the stale document is then served without retrying for a while.
    failed_at: float | None = None


class DidResolver:
    """Resolves did:plc and did:web to checked documents; bounded LRU, fresh for `fresh_ttl` seconds.

    A cached document older than `fresh_ttl` is re-fetched; while the directory is down it is still
    served for up to `max_stale` seconds, retrying every `retry_after` seconds rather than on every
    request. `resolve(did, force_refresh=True)` re-fetches at once (key rotation), at most once per
    `refresh_interval` per DID after the first.

    Strangers choose the issuers: a DID that failed to resolve is answered from memory for
    `failure_ttl` seconds, and each directory gets at most `lookups_per_minute` look-ups of DIDs
    not cached (past that, a cached document is served stale, and an unknown DID fails at once).
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        plc_url: str,
        dev: bool,
        max_entries: int = 10_000,
        # Also bounds how long a key rotated away (perhaps because it leaked) still verifies.
        fresh_ttl: float = 15 * 60,
        max_stale: float = 24 * 3600,
        refresh_interval: float = 10.0,
        retry_after: float = 30.0,
        timeout: float = 5.0,
        max_document_bytes: int = 64 * 1024,
        max_concurrent_fetches: int = 32,
        # A DID that failed to resolve is not asked about again for this long (anyone can send a
        # token naming made-up issuers, each of which would otherwise cost a look-up).
        failure_ttl: float = 60.0,
        # Uncached look-ups per minute of each directory: the PLC, each did:web host.
        lookups_per_minute: float = 120.0,
        allow_private_addresses: bool | None = None,
        address_allowed: Callable[[IPAddress], bool] = is_public_address,
        resolve_host: HostResolver = system_resolve_host,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.plc_url = plc_url.rstrip("/")
        self.dev = dev
        self.max_entries = max_entries
        self.fresh_ttl = fresh_ttl
        self.max_stale = max_stale
        self.refresh_interval = refresh_interval
        self.retry_after = retry_after
        self.timeout = timeout
        self.max_document_bytes = max_document_bytes
        self.allow_private_addresses = dev if allow_private_addresses is None else allow_private_addresses
        self._address_allowed = address_allowed
        self._resolve_host = resolve_host
        self._clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[DidDocument]] = {}
        self._fetch_slots = asyncio.Semaphore(max_concurrent_fetches)
        # Lookups answered from the cache, and those that fetched (spindle_did_cache_requests_total).
        self.hits = 0
        self.misses = 0
        self.failure_ttl = failure_ttl
        self._failures: OrderedDict[str, tuple[ResolutionError, float]] = OrderedDict()
        self._directories = TokenBuckets(per_minute=lookups_per_minute, max_keys=max_entries, clock=clock)

    def fresh(self, did: str) -> DidDocument | None:
        """The cached document of `did` when `resolve` would answer it without a lookup, else None
        (no coroutine: the service-auth check asks this first, on every request)."""
        entry = self._cache.get(did)
        if entry is None or not self._is_fresh(entry, self._clock()):
            return None  # not counted: the caller resolves next, which counts
        self._cache.move_to_end(did)
        self.hits += 1
        return entry.document

    def _is_fresh(self, entry: _Entry, now: float) -> bool:
        """Served without a lookup: fetched within fresh_ttl, or the directory failed just now."""
        return now - entry.fetched_at < self.fresh_ttl or (
            entry.failed_at is not None and now - entry.failed_at < self.retry_after
        )

    async def resolve(self, did: str, *, force_refresh: bool = False) -> DidDocument:
        """The checked document of `did`, from the cache when fresh; ResolutionError says why not."""
        entry = self._cache.get(did)
        now = self._clock()
        if entry is not None:
            if force_refresh:
                if entry.forced_at is not None and now - entry.forced_at < self.refresh_interval:
                    self._cache.move_to_end(did)
                    self.hits += 1
                    return entry.document
                entry.forced_at = now
            elif self._is_fresh(entry, now):
                self._cache.move_to_end(did)
                self.hits += 1
                return entry.document
        else:
            self._check_syntax(did)
            self._check_failures(did, now)
        self.misses += 1
        try:
            return await self._fetch_once(did)
        except DirectoryUnavailable as exc:
            if entry is not None and now - entry.fetched_at < self.max_stale:
                log.warning("serving cached document of %s: %s", did, exc.reason)
                entry.failed_at = now
                return entry.document
            # Not remembered: the directory may be back the next moment, and its rate (not this
            # DID's failure) is what bounds the look-ups while it is down.
            raise
        except ResolutionError as exc:
            # A definite answer (gone, invalid, forbidden) replaces whatever we knew before.
            self._cache.pop(did, None)
            self._remember_failure(did, exc, now + self.failure_ttl)
            raise

    def _check_failures(self, did: str, now: float) -> None:
        """Raise the failure of `did` again, without a look-up, while it is remembered."""
        failed = self._failures.get(did)
        if failed is None:
            return
        error, until = failed
        if now >= until:
            del self._failures[did]
            return
        # metric: DID look-ups answered from the failure cache
        raise type(error)(did, error.reason)

    def _remember_failure(self, did: str, error: ResolutionError, until: float) -> None:
        if self.failure_ttl <= 0:
            return
        self._failures.pop(did, None)
        self._failures[did] = (error, until)
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)

    def _directory(self, did: str) -> str:
        """Whom a look-up of `did` asks: the PLC directory, or the did:web host's domain (its last
        two labels, or its IP address: made-up subdomains of one victim share one rate)."""
        if did.startswith("did:plc:"):
            return self.plc_url
        host = parse_did_web(did)[0].lower().rstrip(".")
        try:
            return str(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            return ".".join(host.rsplit(".", 2)[-2:])

    def _check_syntax(self, did: str) -> None:
        if did.startswith("did:plc:"):
            if not PLC_DID_RE.match(did):
                raise UnsupportedDid(did, "not a valid did:plc identifier")
        elif did.startswith("did:web:"):
            parse_did_web(did)
        else:
            raise UnsupportedDid(did, "only did:plc and did:web identities are supported")

    def _fetch_once(self, did: str) -> Awaitable[DidDocument]:
        # Concurrent lookups of one DID share one fetch; shield it so that one caller giving up
        # (a client disconnecting) does not cancel it for the others.
        task = self._inflight.get(did)
        if task is None:
            directory = self._directory(did)
            wait = self._directories.take(directory)
            if wait > 0:
                # metric: DID look-ups refused by the per-directory rate
                raise _Throttled(did, f"too many look-ups at {directory}; not asked again for {wait:.0f} s")
            task = asyncio.get_running_loop().create_task(self._fetch(did))
            self._inflight[did] = task
            task.add_done_callback(partial(self._fetch_done, did))
        return asyncio.shield(task)

    def _fetch_done(self, did: str, task: asyncio.Task[DidDocument]) -> None:
        if self._inflight.get(did) is task:
            del self._inflight[did]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged as lost

    async def _fetch(self, did: str) -> DidDocument:
        try:
            # One deadline for the whole fetch: per-read timeouts alone let a host drip bytes forever.
            async with asyncio.timeout(self.timeout):
                async with self._fetch_slots:
                    if did.startswith("did:plc:"):
                        body = await self._get(did, f"{self.plc_url}/{did}", where="the PLC directory")
                    else:
                        body = await self._fetch_web(did)
        except TimeoutError:
            raise DirectoryUnavailable(did, f"no answer within {self.timeout:g} s") from None
        document = parse_document(did=did, body=body)
        previous = self._cache.pop(did, None)
        self._cache[did] = _Entry(
            document=document,
            fetched_at=self._clock(),
            forced_at=previous.forced_at if previous else None,
        )
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return document

    async def _fetch_web(self, did: str) -> bytes:
        host, port = parse_did_web(did)
        authority = host if port is None else f"{host}:{port}"
        if self.dev and is_local_host(host):
            return await self._get(did, f"http://{authority}{WELL_KNOWN_PATH}", where=authority)
        if self.allow_private_addresses:
            return await self._get(did, f"https://{authority}{WELL_KNOWN_PATH}", where=authority)
        # Connect to exactly the addresses we checked, not to whatever a second DNS lookup says
        # (DNS rebinding). TLS still verifies the certificate for `host` (SNI), and the connection
        # is closed afterwards so a pooled connection verified for one name never serves another
        # name that shares its address.
        last: DirectoryUnavailable | None = None
        for address in await self._public_addresses(did, host, port or 443):
            url = httpx.URL(scheme="https", host=address, port=port, path=WELL_KNOWN_PATH)
            try:
                return await self._get(
                    did,
                    url,
                    where=authority,
                    headers={"Host": authority, "Connection": "close"},
                    extensions={"sni_hostname": host},
                )
            except _ConnectFailed as exc:
                last = exc
        assert last is not None
        raise DirectoryUnavailable(did, last.reason)

    async def _public_addresses(self, did: str, host: str, port: int) -> list[str]:
        try:
            return await checked_addresses(
                host, port, resolve_host=self._resolve_host, allowed=self._address_allowed
            )
        except HostRefused as exc:
            if not exc.resolves:
                raise DirectoryUnavailable(did, exc.problem) from None
            raise ForbiddenHost(did, f"{exc.problem} (not fetched)") from None

    async def _get(
        self,
        did: str,
        url: str | httpx.URL,
        *,
        where: str,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> bytes:
        request_headers = {
            "Accept": "application/did+ld+json, application/json",
            # Compressed answers could inflate far beyond the size limit before we count them.
            "Accept-Encoding": "identity",
            **(headers or {}),
        }
        limit = self.max_document_bytes
        try:
            async with self.http.stream(
                "GET",
                url,
                headers=request_headers,
                extensions=extensions or {},
                follow_redirects=False,
                timeout=self.timeout,
            ) as response:
                self._check_status(did, where, response.status_code)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise InvalidDidDocument(did, f"{where} sent a document larger than {limit} bytes")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise InvalidDidDocument(did, f"{where} sent a document larger than {limit} bytes")
                return bytes(body)
        except httpx.ConnectError as exc:
            raise _ConnectFailed(did, f"cannot connect to {where}: {exc or type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(did, f"{where} failed: {exc or type(exc).__name__}") from None

    def _check_status(self, did: str, where: str, status: int) -> None:
        if status == 200:
            return
        if status in (408, 429) or status >= 500:
            raise DirectoryUnavailable(did, f"{where} answered HTTP {status}")
        if 300 <= status < 400:
            raise InvalidDidDocument(did, f"{where} answered HTTP {status} (redirects are not followed)")
        if 400 <= status < 500:
            raise DidNotFound(did, f"{where} answered HTTP {status}")
        raise InvalidDidDocument(did, f"{where} answered HTTP {status}")
