"""Database tailers: one per topic, shared by every watcher of that topic in this process.

A run may be executed by another process sharing the database, so this process's broker never
hears of its log lines or transitions. While anyone here watches a topic, its feed reads the
database once per `interval` for rows newer than anything seen on the topic and publishes them
to the broker, as the engine would have. Watchers therefore only ever wait on the broker, and
500 watchers of a quiet run cost one query a second, not 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.streams import service
from app.streams.broker import EVENTS_TOPIC, Broker, logs_topic, status_topic

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
# How far below the newest id /events re-reads: PostgreSQL hands out ids at insert and
# transactions of different runs may commit out of order.
EVENTS_LOOKBACK = 200

Reader = Callable[[AsyncSession, int], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class FeedSpec:
    topic: Hashable
    read: Reader  # items with id > after, oldest first, at most service.PAGE_SIZE
    batched: bool  # publish a page as one list (log lines, as the engine does) or item by item
    lookback: int = 0


def logs_feed(run_id: int) -> FeedSpec:
    async def read(session: AsyncSession, after: int) -> list[dict[str, Any]]:
        return await service.log_items_after(session=session, run_id=run_id, after=after)

    return FeedSpec(logs_topic(run_id), read, batched=True)


def status_feed(run_id: int) -> FeedSpec:
    async def read(session: AsyncSession, after: int) -> list[dict[str, Any]]:
        return await service.status_items_after(session=session, after=after, run_ids=(run_id,))

    return FeedSpec(status_topic(run_id), read, batched=False)


def events_feed() -> FeedSpec:
    async def read(session: AsyncSession, after: int) -> list[dict[str, Any]]:
        return await service.status_items_after(session=session, after=after)

    return FeedSpec(EVENTS_TOPIC, read, batched=False, lookback=EVENTS_LOOKBACK)


def item_ids(item: Any) -> list[int]:
    """The row ids an item published on a topic carries (a dict, or a list of dicts)."""
    if isinstance(item, list):
        return [int(entry["id"]) for entry in item]
    return [int(item["id"])]


class _Feed:
    def __init__(
        self,
        spec: FeedSpec,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        broker: Broker,
        interval: float,
        after: int,
    ) -> None:
        self.spec = spec
        self.sessionmaker = sessionmaker
        self.broker = broker
        self.interval = interval
        self.seen = service.SeenIds(after, lookback=spec.lookback)
        self.holders = 0
        # Subscribed at once, so nothing published between now and the task's first step is lost.
        self.sub = broker.subscribe(spec.topic)
        self.task = asyncio.create_task(self._run(), name=f"feed {spec.topic!r}")

    def stop(self) -> None:
        self.sub.close()
        self.task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.interval
        while True:
            entry = await self.sub.next(timeout=max(next_poll - loop.time(), 0.0))
            if self.sub.overflowed:
                self.sub = self.broker.subscribe(self.spec.topic)
            if entry is not None:
                for item_id in item_ids(entry[1]):
                    self.seen.add(item_id)
            if loop.time() >= next_poll:
                try:
                    await self._poll()
                except Exception:  # the database may be briefly unavailable: try again next time
                    log.warning("polling %r failed", self.spec.topic, exc_info=True)
                next_poll = loop.time() + self.interval

    async def _poll(self) -> None:
        async with self.sessionmaker() as session:
            while True:
                items = await self.spec.read(session, self.seen.floor)
                fresh = self.seen.fresh(items)
                if fresh and self.spec.batched:
                    self.broker.publish(self.spec.topic, fresh)
                elif fresh:
                    for item in fresh:
                        self.broker.publish(self.spec.topic, item)
                if len(items) < service.PAGE_SIZE:
                    return


class Feeds:
    """The feeds of this process, started by the first watcher of a topic, stopped by the last."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        broker: Broker,
        interval: float | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.broker = broker
        self.interval = interval or POLL_INTERVAL
        self._feeds: dict[Hashable, _Feed] = {}

    @contextlib.contextmanager
    def hold(self, spec: FeedSpec, *, after: int) -> Iterator[None]:
        """Keep `spec`'s topic fed from the database while inside; `after` is what the caller read.

        A caller subscribes to the topic and reads the database up to `after` before holding: rows
        committed later either have larger ids than `after` or reach it through the broker.
        """
        feed = self._feeds.get(spec.topic)
        if feed is None:
            feed = _Feed(
                spec, sessionmaker=self.sessionmaker, broker=self.broker, interval=self.interval, after=after
            )
            self._feeds[spec.topic] = feed
        feed.holders += 1
        try:
            yield
        finally:
            feed.holders -= 1
            if feed.holders == 0:
                feed.stop()
                del self._feeds[spec.topic]

    def active(self) -> int:
        return len(self._feeds)
