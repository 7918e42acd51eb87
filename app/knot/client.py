"""Knot XRPC client. (Skeleton: being written.)"""

from __future__ import annotations

import httpx


class KnotClient:
    def __init__(self, *, http: httpx.AsyncClient, dev: bool, timeout: float) -> None:
        self.http = http
        self.dev = dev
        self.timeout = timeout
