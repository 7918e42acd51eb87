"""Followers work from the database: a watcher the broker dropped catches up without gaps or repeats."""

from __future__ import annotations

import asyncio
import contextlib

from app.database import create_engine, create_sessionmaker
from app.runs.models import Status
from app.streams import service, watch
from app.streams.broker import Broker, status_topic
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

        batches = watch.follow_logs(feeds=feeds, run_id=run)
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

        batches = watch.follow_status(feeds=feeds, run_ids=[run])
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


async def test_a_pipeline_watcher_sends_every_runs_current_status_in_one_batch_and_ends_with_the_last(
    sqlite_url,
):
    engine = create_engine(sqlite_url)
    try:
        sessionmaker = create_sessionmaker(engine)
        broker = Broker()
        feeds = Feeds(sessionmaker=sessionmaker, broker=broker)
        recorder = Recorder(sessionmaker, broker)
        runs = await recorder.pipeline("3wpipeline", ("build", "test", "lint"))
        await recorder.move(runs["lint"], Status.SUCCESS)

        batches = watch.follow_status(feeds=feeds, run_ids=list(runs.values()))
        async with contextlib.aclosing(batches), asyncio.timeout(PATIENCE):
            first = [(item["workflow"], item["status"]) for item in await anext(batches)]
            await recorder.move(runs["build"], Status.FAILED)
            await recorder.move(runs["test"], Status.CANCELLED)
            rest = [(item["workflow"], item["status"]) async for batch in batches for item in batch]

        assert first == [("build", "pending"), ("test", "pending"), ("lint", "success")]
        assert rest == [("build", "failed"), ("test", "cancelled")]
        assert feeds.active() == 0 and all(broker.subscriber_count(("status", r)) == 0 for r in runs.values())
    finally:
        await engine.dispose()


async def test_a_pipeline_watcher_keeps_a_transition_whose_commit_another_runs_later_id_overtook(sqlite_url):
    engine = create_engine(sqlite_url)
    try:
        sessionmaker = create_sessionmaker(engine)
        broker = Broker()
        # Feeds that never poll in this test: only what is published below reaches the watcher.
        feeds = Feeds(sessionmaker=sessionmaker, broker=broker, interval=3600)
        writer = Recorder(sessionmaker)  # writes rows; publishing is done by hand, in commit order
        runs = await writer.pipeline("3wovertaken", ("build", "test"))

        async def publish_in_this_order(*run_names: str) -> None:
            async with sessionmaker() as session:
                items = await service.status_items_after(
                    session=session, after=2, run_ids=list(runs.values())
                )
            by_run = {name: [i for i in items if i["workflowRunId"] == runs[name]][-1] for name in run_names}
            for name in run_names:
                broker.publish(status_topic(runs[name]), by_run[name])

        batches = watch.follow_status(feeds=feeds, run_ids=list(runs.values()))
        async with contextlib.aclosing(batches), asyncio.timeout(PATIENCE):
            received = [[(i["id"], i["status"]) for i in await anext(batches)]]
            build = await writer.move(runs["build"], Status.RUNNING)
            test = await writer.move(runs["test"], Status.RUNNING)
            # PostgreSQL hands out ids at insert: test's transaction may commit (and be told) first.
            await publish_in_this_order("test", "build")
            await writer.move(runs["test"], Status.SUCCESS)
            await writer.move(runs["build"], Status.SUCCESS)
            await publish_in_this_order("test", "build")
            received += [[(i["id"], i["status"]) for i in batch] async for batch in batches]

        assert received == [
            [(1, "pending"), (2, "pending")],
            [(test, "running")],
            [(build, "running")],
            [(test + 1, "success")],
            [(test + 2, "success")],
        ]
    finally:
        await engine.dispose()


async def test_a_pipeline_watcher_dropped_for_lagging_catches_up_every_run_from_the_database(database_url):
    engine = create_engine(database_url)
    try:
        sessionmaker = create_sessionmaker(engine)
        broker = Broker(queue_size=2)
        feeds = Feeds(sessionmaker=sessionmaker, broker=broker)
        recorder = Recorder(sessionmaker, broker)
        runs = await recorder.pipeline("3wlagging", ("build", "test", "lint"))

        batches = watch.follow_status(feeds=feeds, run_ids=list(runs.values()))
        async with contextlib.aclosing(batches), asyncio.timeout(PATIENCE):
            received = [item["id"] for item in await anext(batches)]
            # Six transitions while the watcher is busy elsewhere: its queue of two overflows.
            moved = []
            for status in (Status.RUNNING, Status.SUCCESS):
                for name in ("build", "test", "lint"):
                    moved.append(await recorder.move(runs[name], status))
            received += [item["id"] async for batch in batches for item in batch]

        assert received == [1, 2, 3, *moved]
    finally:
        await engine.dispose()
