"""The replay guard: each (iss, jti) once while valid, in bounded memory."""

from __future__ import annotations

import pytest

from app.auth.replay import ReplayGuard, ReplayRejected


def test_accepts_a_jti_once_and_rejects_it_again_until_it_expires():
    guard = ReplayGuard()
    guard.record(iss="did:plc:a", jti="1", forget_at=160.0, now=100.0)
    assert guard.seen(iss="did:plc:a", jti="1", now=150.0)
    with pytest.raises(ReplayRejected, match="token replayed"):
        guard.record(iss="did:plc:a", jti="1", forget_at=170.0, now=150.0)
    assert not guard.seen(iss="did:plc:a", jti="1", now=160.0)
    guard.record(iss="did:plc:a", jti="1", forget_at=260.0, now=200.0)


def test_forgets_expired_entries_so_memory_follows_the_live_tokens():
    guard = ReplayGuard()
    for i in range(100):
        guard.record(iss=f"did:plc:{i % 7}", jti=str(i), forget_at=100.0 + i, now=50.0)
    assert len(guard) == 100
    guard.record(iss="did:plc:x", jti="late", forget_at=400.0, now=150.0)
    assert len(guard) == 50  # jtis 51..99 still live, plus the new one


def test_one_issuer_with_too_many_live_tokens_is_refused_without_pushing_out_others():
    guard = ReplayGuard(max_per_issuer=3)
    guard.record(iss="did:plc:other", jti="keep", forget_at=500.0, now=0.0)
    for i in range(3):
        guard.record(iss="did:plc:noisy", jti=str(i), forget_at=100.0, now=0.0)
    with pytest.raises(ReplayRejected, match="too many live tokens for did:plc:noisy"):
        guard.record(iss="did:plc:noisy", jti="3", forget_at=100.0, now=0.0)
    assert guard.seen(iss="did:plc:other", jti="keep", now=1.0)
    guard.record(iss="did:plc:noisy", jti="3", forget_at=200.0, now=100.0)


def test_when_full_it_forgets_the_entry_closest_to_expiry(caplog):
    guard = ReplayGuard(max_entries=3)
    guard.record(iss="did:plc:a", jti="late", forget_at=300.0, now=0.0)
    guard.record(iss="did:plc:b", jti="soon", forget_at=100.0, now=0.0)
    guard.record(iss="did:plc:c", jti="mid", forget_at=200.0, now=0.0)
    guard.record(iss="did:plc:b", jti="new", forget_at=250.0, now=0.0)
    assert len(guard) == 3
    assert not guard.seen(iss="did:plc:b", jti="soon", now=1.0)
    assert guard.seen(iss="did:plc:a", jti="late", now=1.0)
    assert guard.seen(iss="did:plc:b", jti="new", now=1.0)
    assert "replay guard full" in caplog.text
