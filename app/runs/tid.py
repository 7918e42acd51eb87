"""atproto TIDs: the ids Tangled's CI API gives pipelines (`sh.tangled.ci.*`, format `tid`).

A TID is 64 bits written in 13 characters of base32-sortable: 53 bits of Unix microseconds and
10 bits of clock id (https://atproto.com/specs/record-key#record-key-type-tid). Each process
picks a random clock id and never hands out the same microsecond twice, so ids of one process
are increasing and two processes collide only if they share both the microsecond and the clock id
(the pipeline table's unique index refuses the second; its writer then tries with a new id).
"""

from __future__ import annotations

import re
import secrets
import threading
import time

ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
TID_RE = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}\Z")


def encode(micros: int, clock_id: int) -> str:
    """The TID of (microseconds, clock id)."""
    value = ((micros & ((1 << 53) - 1)) << 10) | (clock_id & 1023)
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in range(12, -1, -1))


def is_tid(value: str) -> bool:
    return TID_RE.match(value) is not None


class TidClock:
    """Hands out increasing TIDs: the current microsecond, or one past the last one given."""

    def __init__(self, clock_id: int | None = None) -> None:
        self.clock_id = secrets.randbelow(1024) if clock_id is None else clock_id
        self._last = 0
        self._lock = threading.Lock()  # the writer's SQLite path and the event loop may both ask

    def next(self) -> str:
        with self._lock:
            micros = max(time.time_ns() // 1000, self._last + 1)
            self._last = micros
        return encode(micros, self.clock_id)


_clock = TidClock()


def new_tid() -> str:
    """A fresh TID of this process."""
    return _clock.next()
