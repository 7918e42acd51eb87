"""Quotas on starting runs: per-actor and per-repo rates (429 with Retry-After), a cap on a repo's
pending runs, read from the database (both databases)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.config import Settings
from app.database import create_engine, create_sessionmaker
from app.runs.models import Pipeline, Status, StatusEvent, WorkflowRun
from app.runs.quota import RunQuota
from app.xrpc.errors import RateLimitExceeded
from tests.runs.conftest import KnotRepo, Spindle

KNOT = "knot.example.com"
REPO_DID = "did:plc:floodfloodfloodflood"


@pytest.fixture
async def spindle(make_spindle: Callable[..., Any]) -> AsyncIterator[Spindle]:
    """A spindle whose actors may start 3 runs a minute."""
    async with make_spindle(actor_runs_per_minute=3, repo_runs_per_minute=100) as running:
        yield running


async def test_refuses_a_trigger_past_the_actors_rate_with_429_and_retry_after(
    spindle: Spindle, repo: KnotRepo
) -> None:
    for _ in range(3):
        ok = await spindle.trigger(repo.body(), by=repo.owner)
        assert ok.status_code == 200, ok.text
    refused = await spindle.trigger(repo.body(), by=repo.owner)
    assert refused.status_code == 429
    assert refused.json()["error"] == "RateLimitExceeded"
    assert repo.owner.did in refused.json()["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert len(await spindle.pipelines()) == 3
    metrics = (await spindle.client.get("/metrics")).text
    assert 'spindle_refused_total{limit="actor_rate"} 1.0' in metrics
    assert 'spindle_refused_total{limit="repo_rate"} 0.0' in metrics


async def test_a_retry_of_a_recorded_trigger_is_answered_past_the_rate(
    spindle: Spindle, repo: KnotRepo
) -> None:
    first = repo.body()
    answered = await spindle.trigger(first, by=repo.owner)
    for _ in range(2):
        assert (await spindle.trigger(repo.body(), by=repo.owner)).status_code == 200
    again = await spindle.trigger(first, by=repo.owner)
    assert again.status_code == 200, again.text
    assert again.json() == answered.json()
    assert len(await spindle.pipelines()) == 3


# -- RunQuota on the database itself ---------------------------------------------------------


@pytest.fixture
async def quota_db(database_url: str) -> AsyncIterator[Any]:
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def add_runs(sessionmaker: Any, *, name: str, count: int, status: Status = Status.PENDING) -> None:
    async with sessionmaker() as session:
        for _ in range(count):
            pipeline = Pipeline(
                knot=KNOT,
                rkey=f"{name}-{secrets.token_hex(8)}",
                repo_did=REPO_DID,
                repo_name=name,
                sha="a" * 40,
                actor=REPO_DID,
                trigger_kind="push",
                trigger={},
                request_digest="0" * 64,
            )
            session.add(pipeline)
            await session.flush()
            run = WorkflowRun(
                pipeline_id=pipeline.id, name="ci", path=".github/workflows/ci.yml", source="", status=status
            )
            session.add(run)
            await session.flush()
            session.add(StatusEvent(workflow_run_id=run.id, status=status))
        await session.commit()


def quota(make_settings: Callable[..., Settings], sessionmaker: Any, **overrides: Any) -> RunQuota:
    return RunQuota(settings=make_settings(**overrides), sessionmaker=sessionmaker)


async def test_refuses_new_runs_of_a_repo_whose_queue_is_full_but_not_of_another_repo(
    quota_db: Any, make_settings: Callable[..., Settings]
) -> None:
    limits = quota(make_settings, quota_db, max_queued_runs_per_repo=4)
    await add_runs(quota_db, name="flood", count=3)
    await add_runs(quota_db, name="flood", count=5, status=Status.SUCCESS)  # finished runs don't count
    await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="flood", actor=None, runs=1)
    await add_runs(quota_db, name="flood", count=1)
    with pytest.raises(RateLimitExceeded) as refused:
        await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="flood", actor=None, runs=1)
    assert "4 runs waiting" in refused.value.message and refused.value.retry_after >= 1
    await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="honest", actor=None, runs=2)


async def test_a_pipeline_larger_than_the_queue_cap_starts_on_an_empty_queue(
    quota_db: Any, make_settings: Callable[..., Settings]
) -> None:
    limits = quota(make_settings, quota_db, max_queued_runs_per_repo=2)
    await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="big", actor=None, runs=5)
    await add_runs(quota_db, name="big", count=1)
    with pytest.raises(RateLimitExceeded):
        await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="big", actor=None, runs=5)


async def test_the_repo_rate_counts_the_starts_of_every_actor_and_of_knot_events(
    quota_db: Any, make_settings: Callable[..., Settings]
) -> None:
    limits = quota(make_settings, quota_db, repo_runs_per_minute=3, actor_runs_per_minute=100)
    for actor in ("did:plc:aaaa", "did:plc:bbbb", None):
        await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="shared", actor=actor, runs=1)
    with pytest.raises(RateLimitExceeded) as refused:
        await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="shared", actor="did:plc:cccc", runs=1)
    assert "started too many runs" in refused.value.message
    assert 1 <= refused.value.retry_after <= 20  # one token comes back every 20 s
    # A refused start takes nothing: another repo and another actor are untouched.
    await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="other", actor="did:plc:cccc", runs=1)


async def test_a_limit_set_to_zero_is_off(quota_db: Any, make_settings: Callable[..., Settings]) -> None:
    limits = quota(
        make_settings, quota_db, repo_runs_per_minute=0, actor_runs_per_minute=0, max_queued_runs_per_repo=0
    )
    await add_runs(quota_db, name="free", count=10)
    for _ in range(200):
        await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="free", actor="did:plc:aaaa", runs=1)


async def test_concurrent_starts_take_no_more_than_the_bucket_holds(
    quota_db: Any, make_settings: Callable[..., Settings]
) -> None:
    limits = quota(make_settings, quota_db, actor_runs_per_minute=3, max_queued_runs_per_repo=100)
    outcomes = await asyncio.gather(
        *(
            limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name=f"r{i}", actor="did:plc:aaaa", runs=1)
            for i in range(10)
        ),
        return_exceptions=True,
    )
    assert sum(outcome is None for outcome in outcomes) == 3
    assert all(isinstance(o, RateLimitExceeded) for o in outcomes if o is not None)


async def test_a_start_refused_for_a_full_queue_gives_its_tokens_back(
    quota_db: Any, make_settings: Callable[..., Settings]
) -> None:
    limits = quota(make_settings, quota_db, actor_runs_per_minute=1, max_queued_runs_per_repo=1)
    await add_runs(quota_db, name="full", count=1)
    with pytest.raises(RateLimitExceeded, match="waiting to start"):
        await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="full", actor="did:plc:aaaa", runs=1)
    await limits.admit(knot=KNOT, repo_did=REPO_DID, repo_name="empty", actor="did:plc:aaaa", runs=1)
