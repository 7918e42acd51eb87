"""Token buckets: bursts, refill over time, bounded keys (on a clock the test moves)."""

from __future__ import annotations

from app.ratelimit import TokenBuckets
from tests.support.clock import ManualClock


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    clock = ManualClock(0)
    buckets = TokenBuckets(per_minute=6, clock=clock)
    assert [buckets.take("a") for _ in range(6)] == [0.0] * 6
    assert buckets.take("a") == 10.0  # one token every 10 s
    assert buckets.take("b") == 0.0  # another key has its own bucket
    clock.advance(10)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_a_bucket_refills_up_to_its_burst_only() -> None:
    clock = ManualClock(0)
    buckets = TokenBuckets(per_minute=60, burst=2, clock=clock)
    clock.advance(3600)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 1.0]


def test_waiting_takes_nothing() -> None:
    buckets = TokenBuckets(per_minute=1, clock=ManualClock(0))
    assert buckets.wait("a") == 0.0
    assert buckets.wait("a") == 0.0
    assert buckets.take("a") == 0.0
    assert buckets.wait("a") == 60.0


def test_the_table_of_keys_is_bounded() -> None:
    buckets = TokenBuckets(per_minute=1, max_keys=10, clock=ManualClock(0))
    for key in range(1000):
        buckets.take(key)
    assert len(buckets._buckets) == 10


def test_a_rate_of_zero_never_refuses() -> None:
    buckets = TokenBuckets(per_minute=0, clock=ManualClock(0))
    assert all(buckets.take("a") == 0.0 for _ in range(100))


def test_tokens_given_back_are_available_again_up_to_the_burst() -> None:
    buckets = TokenBuckets(per_minute=2, clock=ManualClock(0))
    assert buckets.take("a") == 0.0 and buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    buckets.give_back("a")
    assert buckets.take("a") == 0.0
    buckets.give_back("a", 10)
    assert buckets.wait("a", 2) == 0.0 and buckets.wait("a", 3) == 0.0  # more than a burst: once full
    assert buckets._buckets["a"].tokens == 2
