"""Replay guard: each (iss, jti) is accepted once while its token is valid, in bounded memory.

A service-auth token is a bearer credential for up to an hour; remembering its `jti` until it
expires means a token copied from a log or a proxy cannot be played again.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
    """

    PURGE_EVERY = 500  # claims between deletions of expired rows

    def __init__(self, *, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker
        self._claims = 0

    @staticmethod
    def key(iss: str, jti: str) -> str:
        return hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()

    async def claim(self, *, iss: str, jti: str, forget_at: float) -> None:
        """Accept (iss, jti) for the whole deployment; ReplayRejected if any process has."""
        expires_at = datetime.fromtimestamp(forget_at, UTC)
        async with self.sessionmaker() as session:
            session.add(ServiceAuthJti(key=self.key(iss, jti), expires_at=expires_at))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise ReplayRejected("token replayed: this jti was already used by this issuer") from None
            self._claims += 1
            if self._claims % self.PURGE_EVERY == 1:
                await session.execute(
                    delete(ServiceAuthJti).where(ServiceAuthJti.expires_at < datetime.now(UTC))
                )
                await session.commit()
