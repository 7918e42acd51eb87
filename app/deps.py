"""Typed FastAPI dependencies shared by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from fastapi.requests import HTTPConnection
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.context import AppContext


async def get_ctx(conn: HTTPConnection) -> AppContext:
    # HTTPConnection, not Request: WebSocket routes depend on the context too. async: FastAPI
    # runs a plain `def` dependency in a worker thread, a thread hop on every request.
    return conn.app.state.ctx  # type: ignore[no-any-return]


CtxDep = Annotated[AppContext, Depends(get_ctx)]


async def get_settings(ctx: CtxDep) -> Settings:
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(ctx: CtxDep) -> AsyncIterator[AsyncSession]:
    async with ctx.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
