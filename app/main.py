"""create_app(): routers, error handlers and a lifespan that builds every long-lived part
(app.context.AppContext) and stops it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from sqlalchemy import text

from app import metrics
from app.ci import router as ci_router
from app.config import Settings
from app.context import AppContext
from app.deps import CtxDep
from app.identity import router as identity_router
from app.runs import cancel as runs_cancel
from app.runs import router as runs_router
from app.secrets import router as secrets_router
from app.streams import router as streams_router
from app.xrpc.errors import install_error_handlers
from app.xrpc.openapi import install_openapi

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; nothing is connected until its lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = app.state.ctx = AppContext(settings)
        await ctx.start()
        try:
            yield
        finally:
            await ctx.close()

    # The trigger's plain route goes first: the hot path is matched before any other pattern.
    app = FastAPI(
        title="Tangled spindle", version="0.1.0", lifespan=lifespan, routes=list(runs_router.routes)
    )
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(identity_router.router)
    app.include_router(runs_cancel.router)
    app.include_router(secrets_router.router)
    app.include_router(streams_router.router)
    app.include_router(ci_router.router)

    @app.get("/healthz")
    async def healthz(ctx: CtxDep) -> dict[str, str]:
        async with ctx.sessionmaker() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(ctx: CtxDep) -> Response:
        """Prometheus text format (docs/operations.md lists the metrics)."""
        await ctx.metrics.refresh(ctx.sessionmaker)
        return Response(ctx.metrics.render(), media_type=metrics.CONTENT_TYPE)

    return app
