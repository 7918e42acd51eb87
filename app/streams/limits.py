"""Caps on live watchers (log and event WebSockets, status SSE streams) in this process.

    slots = WatcherSlots(total=500, per_address=20)
    with slots.hold(client_address):   # or raises WatchersBusy (503) / RateLimitExceeded (429)
        ...serve the stream...

Each watcher holds a socket, a file descriptor and a broker queue: without caps a stranger opens
thousands and the service runs out of descriptors for everyone (/healthz included). The address
is the one uvicorn reports (the proxy's X-Forwarded-For from a trusted proxy, docs/limits.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from app.xrpc.errors import RateLimitExceeded, ServiceUnavailable

# What a refused watcher is told to wait before trying again.
RETRY_AFTER = 10.0


class WatchersBusy(ServiceUnavailable):
    """The service watches as many streams as it allows; try again later."""

    retry_after = int(RETRY_AFTER)


class WatcherSlots:
    def __init__(self, *, total: int, per_address: int, refused: Callable[[str], None] | None = None) -> None:
        self.refused = refused or (lambda limit: None)  # told each refusal (Metrics.refusal)
        self.total = total
        self.per_address = per_address
        self.count = 0
        self._by_address: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, address: str | None) -> Iterator[None]:
        """One watcher slot for `address` while inside; raises when none is free."""
        key = address or "unknown"
        held = self._by_address.get(key, 0)
        if held >= self.per_address:
            self.refused("watchers_per_address")
            raise RateLimitExceeded(
                f"{key} already watches {held} streams, the most one address may; close one first",
                retry_after=RETRY_AFTER,
            )
        if self.count >= self.total:
            self.refused("watchers_total")
            raise WatchersBusy(f"the service already serves {self.count} live streams; try again shortly")
        self.count += 1
        self._by_address[key] = held + 1
        try:
            yield
        finally:
            self.count -= 1
            left = self._by_address[key] - 1
            if left:
                self._by_address[key] = left
            else:
                del self._by_address[key]
