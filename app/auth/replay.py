"""Replay guard: each (iss, jti) is accepted once while its token is valid, in bounded memory.

A service-auth token is a bearer credential for up to an hour; remembering its `jti` until it
expires means a token copied from a log or a proxy cannot be played again.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.models import ServiceAuthJti

log = logging.getLogger(__name__)


class ReplayRejected(Exception):
    """The token cannot be accepted: replayed, or its issuer holds too many live tokens."""


class ReplayGuard:
    """Remembers `jti`s per issuer until their token's expiry; bounded overall and per issuer."""

    def __init__(self, *, max_entries: int = 100_000, max_per_issuer: int = 10_000) -> None:
        self.max_entries = max_entries
        self.max_per_issuer = max_per_issuer
        self._by_issuer: dict[str, dict[str, float]] = {}
        # (forget_at, iss, jti): a min-heap, so expired entries are dropped in expiry order.
        self._expiry: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, *, iss: str, jti: str, now: float) -> bool:
        """True if this (iss, jti) was accepted before and its token has not expired yet."""
        jtis = self._by_issuer.get(iss)
        return jtis is not None and jtis.get(jti, 0.0) > now

    def record(self, *, iss: str, jti: str, forget_at: float, now: float) -> None:
        """Accept (iss, jti) once, remembered until `forget_at`; ReplayRejected if it was seen."""
        self._purge(now)
        jtis = self._by_issuer.get(iss)
        if jtis is not None:
            if jti in jtis:
                raise ReplayRejected("token replayed: this jti was already used by this issuer")
            if len(jtis) >= self.max_per_issuer:
                # One issuer minting tokens en masse only locks itself out, never pushes others out.
                raise ReplayRejected(f"too many live tokens for {iss}: retry when earlier tokens expire")
        if len(self._expiry) >= self.max_entries:
            # Full with many issuers' live tokens: forget the one closest to expiry rather than
            # refuse everyone (availability over a replay window of at most that token's lifetime).
            self._forget(*heapq.heappop(self._expiry))
            log.warning(
                "replay guard full (%d entries): forgetting the soonest-expiring jti", self.max_entries
            )
        self._by_issuer.setdefault(iss, {})[jti] = forget_at
        heapq.heappush(self._expiry, (forget_at, iss, jti))

    def _purge(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            self._forget(*heapq.heappop(expiry))

    def _forget(self, _: float, iss: str, jti: str) -> None:
        jtis = self._by_issuer.get(iss)
        if jtis is not None:
            jtis.pop(jti, None)
            if not jtis:
                del self._by_issuer[iss]


class SharedReplayLedger:
    """The database's record of accepted (iss, jti), for processes that share one database.

    The in-memory guard only knows what its own process accepted: behind a load balancer, a
    captured token could otherwise be played once against each process. Claiming the jti with
    an INSERT on a primary key makes exactly one process win, whichever it is.

    Claims made while a transaction is being written go into the next one (one multi-row
    `INSERT ... ON CONFLICT DO NOTHING RETURNING key` and one commit for all of them), so an
    authenticated request does not cost a commit of its own. A key that comes back was claimed
    by this request; one that does not, or that an earlier claim of the same batch took, is a
    replay.
    """

    PURGE_EVERY = 500  # claims between deletions of expired rows
    MAX_BATCH = 500

    def __init__(self, *, engine: AsyncEngine) -> None:
        self.engine = engine
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        table = cast(Table, ServiceAuthJti.__table__)
        self._insert = (
            dialect.insert(table).on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key)
        )
        self._purge = delete(table).where(table.c.expires_at < bindparam("now"))
        self._claims = 0
        self._queue: list[tuple[str, datetime, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @staticmethod
    def key(iss: str, jti: str) -> str:
        return hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()

    async def claim(self, *, iss: str, jti: str, forget_at: float) -> None:
        """Accept (iss, jti) for the whole deployment; ReplayRejected if any process has."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((self.key(iss, jti), datetime.fromtimestamp(forget_at, UTC), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="jti-ledger")
        if not await future:
            raise ReplayRejected("token replayed: this jti was already used by this issuer")

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
            try:
                claimed = await self._write(batch)
            except Exception as exc:  # each waiter gets the database's error (a 503 upstream)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for key, _, future in batch:
                # The first claim of a key in the batch got it; a second one is a replay.
                won = key in claimed
                claimed.discard(key)
                if not future.done():
                    future.set_result(won)

    async def _write(self, batch: list[tuple[str, datetime, asyncio.Future[bool]]]) -> set[str]:
        rows = {key: expires_at for key, expires_at, _ in reversed(batch)}  # first claim's expiry
        self._claims += len(batch)
        purge = self._claims >= self.PURGE_EVERY
        async with self.engine.begin() as conn:
            result = await conn.execute(
                self._insert, [{"key": key, "expires_at": at} for key, at in rows.items()]
            )
            claimed = set(result.scalars())
            if purge:
                self._claims = 0
                await conn.execute(self._purge, {"now": datetime.now(UTC)})
        return claimed
