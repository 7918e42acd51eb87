"""In-process publish/subscribe for status transitions and log lines.

Publishers call `publish` only after the rows are committed, so a subscriber that sees an
item can always find it in the database too. A subscriber that falls behind (its queue is
full) is dropped rather than slowing the run down; it notices (`overflowed`) and catches up
from the database, which is also how watchers in another process see progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

QUEUE_SIZE = 10_000


class Subscription:
    def __init__(self, broker: Broker, topic: Hashable) -> None:
        self._broker = broker
        self.topic = topic
        self.queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    async def get(self, timeout: float | None = None) -> Any:
        """The next item, or None after `timeout` seconds (callers then poll the database)."""
        if timeout is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def drain(self) -> list[Any]:
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items

    def close(self) -> None:
        self._broker._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Broker:
    def __init__(self) -> None:
        self._subscribers: dict[Hashable, set[Subscription]] = {}

    def subscribe(self, topic: Hashable) -> Subscription:
        sub = Subscription(self, topic)
        self._subscribers.setdefault(topic, set()).add(sub)
        return sub

    def publish(self, topic: Hashable, item: Any) -> None:
        for sub in list(self._subscribers.get(topic, ())):
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._remove(sub)

    def subscriber_count(self, topic: Hashable) -> int:
        return len(self._subscribers.get(topic, ()))

    def _remove(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.topic]
