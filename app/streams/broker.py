"""In-process publish/subscribe for status transitions and log lines.

Publishers call `publish` only after the rows are committed, so a subscriber that sees an
item can always find it in the database too. `publish` never blocks and costs one
`put_nowait` per subscriber: a subscriber that falls behind (its queue is full) is dropped
rather than slowing the run down; it notices (`overflowed`) and catches up from the
database, which is also how watchers in another process see progress (see feeds.py).

Topics, one place for every publisher and subscriber to name them:
    status_topic(run_id)   a run's committed status transitions
    logs_topic(run_id)     a run's log lines, in batches
    EVENTS_TOPIC           every run's status transitions (the /events stream)
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

# Items per subscriber, not lines: the engine publishes a batch of log lines as one item.
QUEUE_SIZE = 1_000

EVENTS_TOPIC = "events"


def status_topic(run_id: int) -> tuple[str, int]:
    return ("status", run_id)


def logs_topic(run_id: int) -> tuple[str, int]:
    return ("logs", run_id)


class Subscription:
    """One watcher's queue of `(topic, item)` pairs from one or more topics."""

    def __init__(self, broker: Broker, topics: tuple[Hashable, ...], size: int) -> None:
        self._broker = broker
        self.topics = topics
        self.queue: asyncio.Queue[tuple[Hashable, Any]] = asyncio.Queue(size)
        self.overflowed = False

    async def next(self, timeout: float | None = None) -> tuple[Hashable, Any] | None:
        """The next `(topic, item)`, or None after `timeout` seconds of silence."""
        if timeout is None:
            return await self.queue.get()
        try:
            # asyncio.timeout rather than wait_for: no extra task per call (hundreds of watchers).
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None

    async def get(self, timeout: float | None = None) -> Any:
        """The next item, or None after `timeout` seconds (callers then poll the database)."""
        entry = await self.next(timeout)
        return None if entry is None else entry[1]

    def drain(self) -> list[Any]:
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait()[1])
        return items

    def close(self) -> None:
        self._broker._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Broker:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._subscribers: dict[Hashable, set[Subscription]] = {}
        self.queue_size = queue_size

    def subscribe(self, topic: Hashable, *more: Hashable) -> Subscription:
        """A subscription to `topic` (and `more` topics) from now on; close it when done."""
        sub = Subscription(self, (topic, *more), self.queue_size)
        for name in sub.topics:
            self._subscribers.setdefault(name, set()).add(sub)
        return sub

    def publish(self, topic: Hashable, item: Any) -> None:
        """Hand `item` to every subscriber of `topic`; never blocks, drops subscribers that lag."""
        subs = self._subscribers.get(topic)
        if not subs:
            return
        entry = (topic, item)
        for sub in list(subs):
            try:
                sub.queue.put_nowait(entry)
            except asyncio.QueueFull:
                sub.overflowed = True
                self._remove(sub)

    def subscriber_count(self, topic: Hashable) -> int:
        return len(self._subscribers.get(topic, ()))

    def _remove(self, sub: Subscription) -> None:
        for name in sub.topics:
            subs = self._subscribers.get(name)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscribers[name]
