"""create_app(): routers, error handlers and a lifespan that builds every long-lived part."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.auth.replay import SharedReplayLedger
from app.auth.verifier import ServiceAuthVerifier
from app.config import Settings
from app.context import AppContext
from app.database import create_engine, create_sessionmaker, is_sqlite
from app.deps import CtxDep
from app.engine.queue import Scheduler
from app.identity import router as identity_router
from app.identity.resolver import DidResolver
from app.knot.client import KnotClient
from app.knot.events import KnotEventConsumer
from app.repos.service import RegistrationCache
from app.runs import cancel as runs_cancel
from app.runs import router as runs_router
from app.runs.flows import RunStarter
from app.runs.writer import PipelineWriter
from app.streams import router as streams_router
from app.streams.broker import Broker
from app.xrpc.errors import install_error_handlers
from app.xrpc.openapi import install_openapi

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; nothing is connected until its lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.resolved_database_url)
        sessionmaker = create_sessionmaker(engine)
        # One client for identity lookups (the knot client has its own); redirects are not
        # followed (a did:web host could otherwise bounce us to an address we refuse to fetch).
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=5.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        broker = Broker()
        resolver = DidResolver(http=http, plc_url=settings.plc_url, dev=settings.dev)
        # Processes sharing a server database also share the jti ledger; a SQLite file belongs
        # to one `spindle serve`, whose in-memory guard already sees every token.
        ledger = None if is_sqlite(settings.resolved_database_url) else SharedReplayLedger(engine=engine)
        verifier = ServiceAuthVerifier(resolver=resolver, service_did=settings.did, ledger=ledger)
        knot = KnotClient(dev=settings.dev, timeout=settings.knot_timeout)
        scheduler = Scheduler(settings=settings, sessionmaker=sessionmaker, broker=broker, knot=knot)
        writer = PipelineWriter(engine=engine)
        registrations = RegistrationCache(sessionmaker=sessionmaker)
        starter = RunStarter(writer=writer, broker=broker, scheduler=scheduler)
        consumer = KnotEventConsumer(settings=settings, sessionmaker=sessionmaker, knot=knot, starter=starter)
        app.state.ctx = AppContext(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            http=http,
            broker=broker,
            resolver=resolver,
            verifier=verifier,
            knot=knot,
            scheduler=scheduler,
            consumer=consumer,
            writer=writer,
            starter=starter,
            registrations=registrations,
        )
        await writer.start()
        await scheduler.start()
        await consumer.start()
        try:
            yield
        finally:
            await consumer.stop()
            await writer.stop()
            await registrations.close()
            await scheduler.stop()
            await knot.close()
            await http.aclose()
            await engine.dispose()

    # The trigger's plain route goes first: the hot path is matched before any other pattern.
    app = FastAPI(
        title="Tangled spindle", version="0.1.0", lifespan=lifespan, routes=list(runs_router.routes)
    )
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(identity_router.router)
    app.include_router(runs_cancel.router)
    app.include_router(streams_router.router)

    @app.get("/healthz")
    async def healthz(ctx: CtxDep) -> dict[str, str]:
        async with ctx.sessionmaker() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
