"""Token buckets keyed by a name (an actor, a repo, a DID directory), in this process's memory.

    buckets = TokenBuckets(per_minute=30)      # bursts of up to 30, refilled at 30 a minute
    wait = buckets.take("did:plc:alice")       # 0.0: taken; else seconds until one is there

Buckets are per process: several processes sharing a database each allow the full rate
(docs/limits.md says so). The table is bounded: past `max_keys` the least recently used bucket
is forgotten, which can only let its key start again with a full bucket.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    def __init__(
        self,
        *,
        per_minute: float,
        burst: float | None = None,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(burst if burst is not None else per_minute, 1.0)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _refilled(self, key: Hashable, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=self.burst, at=now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            self._buckets.move_to_end(key)
        return bucket

    def wait(self, key: Hashable, tokens: float = 1.0) -> float:
        """Seconds until `tokens` are in `key`'s bucket (0.0 when they are now); takes nothing."""
        if not self.enabled:
            return 0.0
        bucket = self._refilled(key, self._clock())
        missing = min(tokens, self.burst) - bucket.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def give_back(self, key: Hashable, tokens: float = 1.0) -> None:
        """Return tokens taken for something that did not happen after all."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + min(tokens, self.burst))

    def take(self, key: Hashable, tokens: float = 1.0) -> float:
        """Take `tokens` from `key`'s bucket and return 0.0, or take nothing and return the seconds
        until they are there. More tokens than a burst are taken once the bucket is full."""
        wait = self.wait(key, tokens)
        if wait == 0.0 and self.enabled:
            bucket = self._buckets[key]
            bucket.tokens -= min(tokens, self.burst)
        return wait
