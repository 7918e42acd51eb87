"""Following a run's log, a run's or a pipeline's status, or every transition: history first, then live.

Each follower subscribes to the broker *before* reading the database, so nothing committed in
between is lost; it then reads the rows after the last id it yielded, and from then on waits
on the broker, which this process's engine and the shared database feeds (feeds.py) both
publish to. Items are deduplicated by row id. A follower that falls behind is dropped by the
broker; it then resubscribes and catches up from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Hashable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.ratelimit import TokenBuckets
from app.streams import feeds as feeds_
from app.streams import service
from app.streams.broker import EVENTS_TOPIC, Broker, Subscription

Batch = list[Mapping[str, Any]]


class _Topics:
    """A subscription that is renewed when the broker drops it; the caller then catches up."""

    def __init__(self, broker: Broker, *topics: Hashable) -> None:
        self.broker = broker
        self.topics = topics
        self.sub: Subscription = broker.subscribe(*topics)
        self._renewed = False

    async def next(self, timeout: float | None = None) -> tuple[Hashable, Any] | None:
        """The next (topic, item); None after `timeout` seconds, or after a renewal."""
        if not self.sub.overflowed:
            entry = await self.sub.next(timeout)
            if not self.sub.overflowed:
                return entry
        self.sub.close()
        self.sub = self.broker.subscribe(*self.topics)
        self._renewed = True
        return None

    def take_renewed(self) -> bool:
        """True once after each renewal: what was queued is gone, read the database."""
        renewed, self._renewed = self._renewed, False
        return renewed

    def close(self) -> None:
        self.sub.close()


def _as_list(item: Any) -> list[Mapping[str, Any]]:
    return item if isinstance(item, list) else [item]


# /events replays history in pages this small: each page is read and encoded in one go on the
# event loop, and a client replaying from cursor=0 should not hold the loop for long at a time.
EVENTS_REPLAY_PAGE = 100
REPLAY_BUDGET_KEY = "events replay"


class ReplayLimitReached(Exception):
    """An /events connection replayed as many events as one may; `cursor` is the last one sent."""

    def __init__(self, cursor: int) -> None:
        super().__init__(f"replay limit reached at cursor {cursor}")
        self.cursor = cursor


async def _pages(
    sessionmaker: async_sessionmaker[AsyncSession],
    seen: service.SeenIds,
    read: feeds_.Reader,
    page_size: int = service.PAGE_SIZE,
) -> AsyncGenerator[Batch, None]:
    """Pages of rows not seen yet; each read in a short session, none held while the caller sends
    (the next page is read only once the caller has sent this one: the socket sets the pace)."""
    while True:
        async with sessionmaker() as session:
            items = await read(session, seen.floor)
        fresh = seen.fresh(items)
        if fresh:
            yield fresh
        if len(items) < page_size:
            return


async def follow_logs(
    *,
    feeds: feeds_.Feeds,
    run_id: int,
) -> AsyncGenerator[Batch, None]:
    """Batches of the run's log items, oldest first; ends once the run finished and all were sent."""
    seen = service.SeenIds()
    logs_spec, status_spec = feeds_.logs_feed(run_id), feeds_.status_feed(run_id)
    sessionmaker = feeds.sessionmaker
    topics = _Topics(feeds.broker, logs_spec.topic, status_spec.topic)

    async def state() -> tuple[bool, int]:
        # Read before the lines: a run seen finished has all its lines committed.
        async with sessionmaker() as session:
            finished = (await service.run_status(session=session, run_id=run_id)).is_finished
            latest = await service.latest_status_item(session=session, run_id=run_id)
        return finished, int(latest["id"]) if latest else 0

    try:
        finished, status_after = await state()
        async for batch in _pages(sessionmaker, seen, logs_spec.read):
            yield batch
        if finished:
            return
        with feeds.hold(logs_spec, after=seen.last), feeds.hold(status_spec, after=status_after):
            while True:
                entry = await topics.next()
                if entry is not None:
                    topic, item = entry
                    if topic == logs_spec.topic:
                        fresh = seen.fresh(_as_list(item))
                        if fresh:
                            yield fresh
                        continue
                    if not any(service.is_finished(i) for i in _as_list(item)):
                        continue
                # The run finished, or the broker dropped us: the database has the rest.
                topics.take_renewed()
                finished, _ = await state()
                async for batch in _pages(sessionmaker, seen, logs_spec.read):
                    yield batch
                if finished:
                    return
    finally:
        topics.close()


async def follow_status(
    *,
    feeds: feeds_.Feeds,
    run_ids: Sequence[int],
    after: int | None = None,
    idle: float | None = None,
) -> AsyncGenerator[Batch, None]:
    """The runs' current transitions (or every one after `after`), then each new one; ends when all finished.

    One run is a workflow's status stream, all of a pipeline's runs the pipeline's. After `idle`
    seconds without a transition it yields an empty batch, for keep-alives.
    """
    if not run_ids:
        return
    # Ids are deduplicated per run: one writer appends a run's transitions in id order, but two
    # runs' transactions may commit out of id order (PostgreSQL), and one floor would drop the later.
    seen = {run_id: service.SeenIds(after or 0) for run_id in run_ids}
    finished = dict.fromkeys(run_ids, False)
    specs = [feeds_.status_feed(run_id) for run_id in run_ids]
    sessionmaker = feeds.sessionmaker
    topics = _Topics(feeds.broker, *(spec.topic for spec in specs))

    def fresh(items: Iterable[Mapping[str, Any]]) -> Batch:
        batch = [item for item in items if seen[item["workflowRunId"]].add(int(item["id"]))]
        for item in batch:
            finished[item["workflowRunId"]] = service.is_finished(item)
        return batch

    async def catch_up(*, start: bool = False) -> Batch:
        async with sessionmaker() as session:
            latest = await service.latest_status_items(session=session, run_ids=run_ids)
            # A run whose every transition the client already has may be finished too.
            finished.update((item["workflowRunId"], service.is_finished(item)) for item in latest)
            # A run with no transition left was deleted (retention; only finished runs are): it is
            # over for its watchers, whose stream ends rather than waiting for news that never comes.
            present = {item["workflowRunId"] for item in latest}
            finished.update((run_id, True) for run_id in run_ids if run_id not in present)
            if start and after is None:
                return fresh(latest)
            # A pipeline's runs have a few transitions each: few pages, read before anything is sent.
            batch: Batch = []
            cursor = min(run_seen.floor for run_seen in seen.values())
            while True:
                items = await service.status_items_after(session=session, after=cursor, run_ids=run_ids)
                batch += fresh(items)
                if len(items) < service.PAGE_SIZE:
                    return batch
                cursor = int(items[-1]["id"])

    try:
        batch = await catch_up(start=True)
        if batch:
            yield batch
        if all(finished.values()):
            return
        with contextlib.ExitStack() as holding:
            for run_id, spec in zip(run_ids, specs, strict=True):
                holding.enter_context(feeds.hold(spec, after=seen[run_id].last))
            while True:
                entry = await topics.next(idle)
                if topics.take_renewed():
                    batch = await catch_up()
                elif entry is None:
                    yield []
                    continue
                else:
                    batch = fresh(_as_list(entry[1]))
                if batch:
                    yield batch
                if all(finished.values()):
                    return
    finally:
        topics.close()


@contextlib.asynccontextmanager
async def follow_events(
    *,
    feeds: feeds_.Feeds,
    cursor: int | None,
    replay_max: int | None = None,
    replay_budget: TokenBuckets | None = None,
) -> AsyncIterator[AsyncGenerator[Batch, None]]:
    """Every transition of every run after `cursor` (an event id, or Unix nanoseconds), then live.

    Without a cursor only transitions after entering are sent, as Tangled's spindle does; entering
    subscribes and fixes that point, so callers enter before telling a client it is connected.
    The replay of history is read in pages of EVENTS_REPLAY_PAGE; past `replay_max` replayed
    transitions the generator raises ReplayLimitReached (the client continues from its cursor).
    `replay_budget` paces the pages of every replay sharing it (events a second).
    """
    topics = _Topics(feeds.broker, EVENTS_TOPIC)
    try:
        async with feeds.sessionmaker() as session:
            if cursor is None:
                start = await service.last_event_id(session=session)
            elif cursor >= service.NANOSECOND_CURSOR:
                since = service.nanoseconds_to_datetime(cursor)
                start = await service.event_id_before(session=session, since=since)
            else:
                start = cursor
        yield _events(
            feeds=feeds, topics=topics, start=start, replay_max=replay_max, replay_budget=replay_budget
        )
    finally:
        topics.close()


async def _events(
    *,
    feeds: feeds_.Feeds,
    topics: _Topics,
    start: int,
    replay_max: int | None,
    replay_budget: TokenBuckets | None,
) -> AsyncGenerator[Batch, None]:
    seen = service.SeenIds(start, lookback=feeds_.EVENTS_LOOKBACK)
    spec = feeds_.events_feed()

    async def history() -> AsyncGenerator[Batch, None]:
        # Far below the newest id everything is committed: page through it after the last id
        # read (a floor `lookback` below it would re-read most of a small page), then read the
        # last stretch from the floor, as the live part does.
        while True:
            if replay_budget is not None:
                # Every replaying connection of the process shares one rate: each waits its turn.
                while (wait := replay_budget.take(REPLAY_BUDGET_KEY, EVENTS_REPLAY_PAGE)) > 0:
                    await asyncio.sleep(wait)
            async with feeds.sessionmaker() as session:
                items = await service.events_after(session=session, after=seen.last, limit=EVENTS_REPLAY_PAGE)
            fresh = seen.fresh(items)
            if fresh:
                yield fresh
            if len(items) < EVENTS_REPLAY_PAGE:
                break
        async for batch in _pages(feeds.sessionmaker, seen, spec.read):
            yield batch

    replayed, last_sent = 0, start
    async with contextlib.aclosing(history()) as batches:
        async for batch in batches:
            if replay_max is not None and replayed + len(batch) > replay_max:
                batch = batch[: replay_max - replayed]
                if batch:
                    yield batch
                    last_sent = int(batch[-1]["id"])
                # metric: /events replays stopped at their bound
                raise ReplayLimitReached(last_sent)
            replayed += len(batch)
            last_sent = int(batch[-1]["id"])
            yield batch
    with feeds.hold(spec, after=seen.last):
        while True:
            entry = await topics.next()
            if topics.take_renewed():
                async for batch in _pages(feeds.sessionmaker, seen, spec.read):
                    yield batch
            elif entry is not None:
                fresh = seen.fresh(_as_list(entry[1]))
                if fresh:
                    yield fresh
