"""Knot events past a repo's rate: logged and not recorded (a knot cannot be answered 429)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.events.conftest import EventKnot, Spindle, eventually
from tests.support.knot_events import push_event


@pytest.fixture
async def spindle(make_spindle: Callable[..., Any]) -> AsyncIterator[Spindle]:
    """A spindle where a repo may start 2 pipelines a minute."""
    async with make_spindle(repo_runs_per_minute=2) as running:
        yield running


async def test_an_event_past_the_repos_rate_is_logged_and_records_nothing(
    spindle: Spindle, registered: EventKnot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.knot")
    knot, stream, git = registered.host, registered.stream, registered.repo
    accepted = [stream.emit(push_event(knot, git, registered.sha, workflows=["quick.yml"])) for _ in range(2)]
    refused = stream.emit(push_event(knot, git, registered.sha, workflows=["quick.yml"]))

    async def logged() -> bool:
        return any(
            f"skipped pipeline {refused}: refused:" in r.getMessage()
            and "started too many runs" in r.getMessage()
            for r in caplog.records
        )

    await eventually(logged, what="the refused event's log line")
    assert sorted(p.rkey for p in await spindle.pipelines()) == sorted(accepted)
    assert await spindle.pipeline(knot, refused) is None
