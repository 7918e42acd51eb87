"""The long-lived parts of a running service: built once when the app's lifespan starts, shared
by routes, and stopped in reverse order when it ends.

    AppContext(settings)   builds them, connecting nothing yet
    await ctx.start()      checks the secrets key against the stored secrets, then starts the
                           pipeline writer, the scheduler, the knot event consumer, Jetstream,
                           retention
    await ctx.close()      stops those, then closes clients and the database engine
"""

from __future__ import annotations

from typing import Any

import httpx

from app.auth.replay import SharedReplayLedger
from app.auth.verifier import ServiceAuthVerifier
from app.config import Settings
from app.database import create_engine, create_sessionmaker, is_sqlite
from app.engine import masking
from app.engine.queue import Scheduler
from app.identity.pds import PdsRecordReader
from app.identity.resolver import DidResolver
from app.jetstream.consumer import JetstreamConsumer
from app.knot.client import KnotClient
from app.knot.events import KnotEventConsumer
from app.metrics import Metrics
from app.repos.service import RegistrationCache
from app.runs.flows import RunFlows, RunStarter
from app.runs.quota import RunQuota
from app.runs.retention import RetentionSweeper
from app.runs.writer import PipelineWriter
from app.secrets import service as secrets_service
from app.secrets.crypto import SecretCipher
from app.streams.broker import Broker


class AppContext:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine = create_engine(settings.resolved_database_url)
        self.sessionmaker = create_sessionmaker(self.engine)
        # One client for identity lookups (the knot client has its own); redirects are not
        # followed (a did:web host could otherwise bounce us to an address we refuse to fetch).
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=5.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        self.broker = Broker()
        self.resolver = DidResolver(
            http=self.http,
            plc_url=settings.plc_url,
            dev=settings.dev,
            failure_ttl=settings.did_failure_ttl,
            lookups_per_minute=settings.did_lookups_per_minute,
        )
        self.metrics.count_did_cache(lambda: self.resolver)
        # Processes sharing a server database also share the jti ledger; a SQLite file belongs
        # to one `spindle serve`, whose in-memory guard already sees every token.
        ledger = None if is_sqlite(settings.resolved_database_url) else SharedReplayLedger(engine=self.engine)
        self.verifier = ServiceAuthVerifier(resolver=self.resolver, service_did=settings.did, ledger=ledger)
        self.knot = KnotClient(dev=settings.dev, timeout=settings.knot_timeout)
        self.secrets = SecretCipher.from_settings(settings)
        self.scheduler = Scheduler(
            settings=settings,
            sessionmaker=self.sessionmaker,
            broker=self.broker,
            knot=self.knot,
            secrets=self.secrets,
            metrics=self.metrics,
        )
        self.writer = PipelineWriter(engine=self.engine)
        self.registrations = RegistrationCache(sessionmaker=self.sessionmaker)
        self.flows = RunFlows(
            settings=settings,
            sessionmaker=self.sessionmaker,
            knot=self.knot,
            registrations=self.registrations,
            starter=RunStarter(
                writer=self.writer,
                broker=self.broker,
                scheduler=self.scheduler,
                quota=RunQuota(settings=settings, sessionmaker=self.sessionmaker, metrics=self.metrics),
            ),
        )
        self.consumer = KnotEventConsumer(
            settings=settings, sessionmaker=self.sessionmaker, knot=self.knot, flows=self.flows
        )
        self.retention = RetentionSweeper(settings=settings, engine=self.engine, metrics=self.metrics)
        self.jetstream = JetstreamConsumer(
            settings=settings,
            sessionmaker=self.sessionmaker,
            records=PdsRecordReader(http=self.http, resolver=self.resolver, dev=settings.dev),
            flows=self.flows,
            metrics=self.metrics,
        )
        self.extras: dict[str, Any] = {}

    async def start(self) -> None:
        # A wrong or missing key stops the service here, naming SPINDLE_SECRETS_KEY, rather than
        # failing every run that has secrets later.
        async with self.sessionmaker() as session:
            await secrets_service.check_stored_key(session=session, cipher=self.secrets)
        masking.install_log_filter()
        await self.writer.start()
        await self.scheduler.start()
        await self.consumer.start()
        await self.jetstream.start()
        await self.retention.start()

    async def close(self) -> None:
        await self.retention.stop()
        await self.jetstream.stop()
        await self.consumer.stop()
        await self.writer.stop()
        await self.registrations.close()
        await self.scheduler.stop()
        await self.knot.close()
        await self.http.aclose()
        await self.engine.dispose()
