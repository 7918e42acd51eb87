"""Processes sharing one database accept a token's jti once between them, not once each."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select

from app.auth.models import ServiceAuthJti
from app.auth.replay import ReplayRejected, SharedReplayLedger
from app.database import create_engine, create_sessionmaker
from tests.auth.conftest import NSID
from tests.auth.test_verifier import bearer, rejection, token_for
from tests.support.keys import SigningKey


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessionmaker(engine):
    return create_sessionmaker(engine)


async def test_a_token_accepted_by_one_process_is_a_replay_for_another(make_verifier, plc, engine):
    key = SigningKey.generate("ES256K")
    iss = plc.register(key)
    # Two verifiers, each with its own in-memory guard, as two processes have.
    first = make_verifier(ledger=SharedReplayLedger(engine=engine))
    second = make_verifier(ledger=SharedReplayLedger(engine=engine))
    token = token_for(key, iss)

    assert await first.verify(bearer(token), lxm=NSID) == iss
    error = await rejection(second, bearer(token))
    assert error.error == "BadJwt"
    assert error.message.startswith("token replayed")


async def test_the_ledger_keeps_a_hash_until_expiry_and_purges_expired_rows(engine, sessionmaker):
    ledger = SharedReplayLedger(engine=engine)
    await ledger.claim(iss="did:plc:alice", jti="old", forget_at=datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    ledger._claims = ledger.PURGE_EVERY  # the next claim purges
    await ledger.claim(iss="did:plc:alice", jti="new", forget_at=datetime.now(UTC).timestamp() + 60)
    async with sessionmaker() as session:
        keys = set(await session.scalars(select(ServiceAuthJti.key)))
        count = await session.scalar(select(func.count()).select_from(ServiceAuthJti))
    assert keys == {SharedReplayLedger.key("did:plc:alice", "new")}
    assert count == 1
    assert all("alice" not in k for k in keys)


async def test_claims_made_together_share_one_transaction_and_a_repeat_among_them_is_refused(engine):
    ledger = SharedReplayLedger(engine=engine)
    forget_at = datetime.now(UTC).timestamp() + 60
    jtis = [f"jti-{i}" for i in range(20)] + ["jti-3"]  # the last one repeats a claim of the batch
    commits = 0

    @event.listens_for(engine.sync_engine, "commit")
    def count(_conn):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1

    outcomes = await asyncio.gather(
        *(ledger.claim(iss="did:plc:alice", jti=jti, forget_at=forget_at) for jti in jtis),
        return_exceptions=True,
    )

    assert outcomes[:20] == [None] * 20
    assert isinstance(outcomes[20], ReplayRejected)
    assert commits == 1
    with pytest.raises(ReplayRejected):
        await ledger.claim(iss="did:plc:alice", jti="jti-0", forget_at=forget_at)
