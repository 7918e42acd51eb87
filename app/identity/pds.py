"""Reading an account's public records from its PDS (`com.atproto.repo.listRecords`), for backfill.

    reader = PdsRecordReader(http=..., resolver=..., dev=...)
    async for record in reader.list_records(did, "sh.tangled.repo"):   # PdsRecord(uri, rkey, value)

The PDS is the `#atproto_pds` service of the account's DID document. Pages are read until the
PDS gives no cursor, at most MAX_RECORDS records; each answer is bounded in size. Outside dev
mode only public addresses are contacted, and the connection goes to exactly the address that was
checked (as app.identity.resolver does for did:web): a DID document names any URL it likes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from app.identity.resolver import DidResolver, HostResolver, system_resolve_host
from app.identity.web import HostRefused, checked_addresses

LIST_RECORDS = "com.atproto.repo.listRecords"
PAGE_SIZE = 100
MAX_RECORDS = 10_000  # per (account, collection): more is not a Tangled account's records
MAX_PAGE_BYTES = 4 << 20


class PdsError(Exception):
    """The account's PDS could not be found or read; `reason` says why."""

    def __init__(self, did: str, reason: str) -> None:
        super().__init__(f"could not read the records of {did}: {reason}")
        self.did = did
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PdsRecord:
    uri: str
    rkey: str
    value: dict[str, Any]


def pds_endpoint(document: dict[str, Any]) -> str | None:
    """The `#atproto_pds` service endpoint of a DID document, if it names one."""
    services = document.get("service")
    if not isinstance(services, list):
        return None
    for service in services:
        if not isinstance(service, dict):
            continue
        if service.get("id") in ("#atproto_pds", f"{document.get('id')}#atproto_pds"):
            endpoint = service.get("serviceEndpoint")
            return endpoint.rstrip("/") if isinstance(endpoint, str) else None
    return None


class PdsRecordReader:
    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        resolver: DidResolver,
        dev: bool,
        timeout: float = 10.0,
        resolve_host: HostResolver = system_resolve_host,
    ) -> None:
        self.http = http
        self.resolver = resolver
        self.dev = dev
        self.timeout = timeout
        self._resolve_host = resolve_host

    async def list_records(self, did: str, collection: str) -> AsyncIterator[PdsRecord]:
        """Every record of `collection` in `did`'s repo, page by page; PdsError when it cannot."""
        document = await self.resolver.resolve(did)
        endpoint = pds_endpoint(document.raw)
        if endpoint is None:
            raise PdsError(did, "its DID document names no #atproto_pds service")
        url = httpx.URL(endpoint)
        if url.scheme not in ("https", "http") or not url.host or (url.scheme == "http" and not self.dev):
            raise PdsError(did, f"its PDS endpoint {endpoint!r} is not an https URL")
        cursor: str | None = None
        seen = 0
        while True:
            params = {"repo": did, "collection": collection, "limit": str(PAGE_SIZE)}
            if cursor:
                params["cursor"] = cursor
            page = await self._get(did, url.join(f"/xrpc/{LIST_RECORDS}"), params)
            records = page.get("records")
            if not isinstance(records, list):
                raise PdsError(did, f"{LIST_RECORDS} answered without a records list")
            for item in records:
                record = _record(item, did, collection)
                if record is None:
                    continue
                seen += 1
                if seen > MAX_RECORDS:
                    raise PdsError(did, f"more than {MAX_RECORDS} {collection} records")
                yield record
            next_cursor = page.get("cursor")
            if not records or not isinstance(next_cursor, str) or not next_cursor or next_cursor == cursor:
                return
            cursor = next_cursor

    async def _get(self, did: str, url: httpx.URL, params: dict[str, str]) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        extensions: dict[str, Any] = {}
        target = url.copy_merge_params(params)
        if not self.dev:
            # Connect to the checked address itself: a second DNS answer could name our network.
            host, port = url.host, url.port or 443
            address = await self._public_address(did, host, port)
            headers.update({"Host": url.netloc.decode("ascii"), "Connection": "close"})
            extensions["sni_hostname"] = host
            target = target.copy_with(host=address)
        try:
            async with self.http.stream(
                "GET",
                target,
                headers=headers,
                extensions=extensions,
                follow_redirects=False,
                timeout=self.timeout,
            ) as response:
                if response.status_code != 200:
                    raise PdsError(did, f"{LIST_RECORDS} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        raise PdsError(did, f"{LIST_RECORDS} sent more than {MAX_PAGE_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise PdsError(did, f"{LIST_RECORDS} failed: {exc or type(exc).__name__}") from None
        try:
            page = json.loads(body)
        except (ValueError, RecursionError):
            raise PdsError(did, f"{LIST_RECORDS} answered with something that is not JSON") from None
        if not isinstance(page, dict):
            raise PdsError(did, f"{LIST_RECORDS} answered with something that is not an object")
        return page

    async def _public_address(self, did: str, host: str, port: int) -> str:
        try:
            return (await checked_addresses(host, port, resolve_host=self._resolve_host))[0]
        except HostRefused as exc:
            raise PdsError(did, f"its PDS host {exc.problem}") from None


def _record(item: Any, did: str, collection: str) -> PdsRecord | None:
    """A listed record of `did`'s `collection`, or None for an entry that is not one."""
    if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
        return None
    uri = item.get("uri")
    prefix = f"at://{did}/{collection}/"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        return None
    rkey = uri.removeprefix(prefix)
    if not rkey or "/" in rkey or len(rkey) > 512:
        return None
    return PdsRecord(uri=uri, rkey=rkey, value=item["value"])
