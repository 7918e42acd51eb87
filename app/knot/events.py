"""Consumer of registered knots' /events streams. (Skeleton: being written.)"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.engine.queue import Scheduler
from app.knot.client import KnotClient


class KnotEventConsumer:
    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        knot: KnotClient,
        scheduler: Scheduler,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.knot = knot
        self.scheduler = scheduler

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
