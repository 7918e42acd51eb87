"""Followers work from the database: a watcher the broker dropped catches up without gaps or repeats."""

from __future__ import annotations

import asyncio
import contextlib

from app.database import create_engine, create_sessionmaker
from app.runs.models import Status
from app.streams import watch
from app.streams.broker import Broker
from app.streams.feeds import Feeds
from tests.streams.runs import Recorder, data
from tests.streams.wire import PATIENCE


async def test_a_log_watcher_dropped_for_lagging_catches_up_from_the_database(database_url):
    engine = create_engine(database_url)
    try:
        sessionmaker = create_sessionmaker(engine)
        broker = Broker(queue_size=2)
        feeds = Feeds(sessionmaker=sessionmaker, broker=broker)
        recorder = Recorder(sessionmaker, broker)
        run = (await recorder.pipeline("3wslow"))["ci"]
        await recorder.move(run, Status.RUNNING)
        await recorder.lines(run, [data("first")])

        batches = watch.follow_logs(sessionmaker=sessionmaker, broker=broker, feeds=feeds, run_id=run)
        async with contextlib.aclosing(batches), asyncio.timeout(PATIENCE):
            received = [item["content"] for item in await anext(batches)]
            # Five batches while the watcher is busy elsewhere: its queue of two overflows.
            for batch in range(5):
                await recorder.lines(run, [data(f"{batch}a"), data(f"{batch}b")])
            await recorder.move(run, Status.SUCCESS)
            async for batch in batches:
                received += [item["content"] for item in batch]

        assert received == ["first"] + [f"{b}{x}" for b in range(5) for x in "ab"]
        assert broker.subscriber_count(("logs", run)) == 0 and feeds.active() == 0
    finally:
        await engine.dispose()


async def test_a_status_watcher_ends_at_the_finished_state_and_releases_its_feed(sqlite_url):
    engine = create_engine(sqlite_url)
    try:
        sessionmaker = create_sessionmaker(engine)
        broker = Broker()
        feeds = Feeds(sessionmaker=sessionmaker, broker=broker)
        recorder = Recorder(sessionmaker, broker)
        run = (await recorder.pipeline("3wstatus"))["ci"]

        batches = watch.follow_status(sessionmaker=sessionmaker, broker=broker, feeds=feeds, run_id=run)
        async with contextlib.aclosing(batches), asyncio.timeout(PATIENCE):
            seen = [item["status"] for item in await anext(batches)]
            await recorder.move(run, Status.RUNNING)
            await recorder.move(run, Status.CANCELLED)
            async for batch in batches:
                seen += [item["status"] for item in batch]

        assert seen == ["pending", "running", "cancelled"]
        assert feeds.active() == 0 and broker.subscriber_count(("status", run)) == 0
    finally:
        await engine.dispose()
