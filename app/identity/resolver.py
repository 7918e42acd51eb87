"""DID resolution (did:plc, did:web) with a bounded TTL cache. (Skeleton: being written.)"""

from __future__ import annotations

import httpx


class DidResolver:
    def __init__(self, *, http: httpx.AsyncClient, plc_url: str, dev: bool) -> None:
        self.http = http
        self.plc_url = plc_url
        self.dev = dev
