"""The long-lived parts of a running service, built once in the lifespan and shared by routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.streams.broker import Broker

if TYPE_CHECKING:
    from app.auth.verifier import ServiceAuthVerifier
    from app.engine.queue import Scheduler
    from app.identity.resolver import DidResolver
    from app.knot.client import KnotClient
    from app.knot.events import KnotEventConsumer
    from app.repos.service import RegistrationCache
    from app.runs.flows import RunStarter
    from app.runs.writer import PipelineWriter


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    broker: Broker
    resolver: DidResolver
    verifier: ServiceAuthVerifier
    knot: KnotClient
    scheduler: Scheduler
    consumer: KnotEventConsumer
    writer: PipelineWriter
    starter: RunStarter
    registrations: RegistrationCache
    extras: dict[str, Any] = field(default_factory=dict)
