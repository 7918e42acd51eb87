"""Deduplication by row id: in order for one run, with a lookback window for /events."""

from __future__ import annotations

from app.streams.service import SeenIds


def test_in_order_ids_are_taken_once_and_older_ones_refused():
    seen = SeenIds(5)
    assert [seen.add(i) for i in (3, 5, 6, 6, 8, 7)] == [False, False, True, False, True, False]
    assert seen.floor == 8


def test_with_a_lookback_a_late_committed_id_is_still_taken_once():
    seen = SeenIds(10, lookback=3)
    assert [seen.add(i) for i in (12, 13, 11, 11, 12)] == [True, True, True, False, False]
    assert seen.floor == 10  # never below where the watcher started
    assert [seen.add(i) for i in (20, 17, 18, 18)] == [True, False, True, False]
    assert seen.floor == 17


def test_the_lookback_window_stays_small_however_many_ids_pass():
    seen = SeenIds(0, lookback=200)
    for i in range(1, 100_000):
        seen.add(i)
    assert len(seen._recent) <= 200
