"""A real service over HTTP for stream and browser tests, and recorders playing trigger and engine.

conftest.py files import the fixtures from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI

from app.config import Settings
from app.context import AppContext
from app.database import create_engine, create_sessionmaker
from app.main import create_app
from tests.streams.runs import Recorder
from tests.support.servers import ServerThread, free_port


class LoopServer(ServerThread):
    """A ServerThread whose event loop tests can reach: the service's broker lives on it."""

    loop: asyncio.AbstractEventLoop

    def _run(self) -> None:
        with asyncio.Runner() as runner:
            self.loop = runner.get_loop()
            runner.run(self.server.serve())

    async def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run `coro` on the server's loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call_sync(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run `coro` on the server's loop from a thread without a loop (a synchronous test)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class ServiceEngine:
    """A Recorder that runs on the service's loop with the service's broker: the local engine."""

    def __init__(self, server: LoopServer, ctx: AppContext) -> None:
        self.server = server
        self.recorder = Recorder(ctx.sessionmaker, ctx.broker)

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        method = getattr(self.recorder, name)

        async def remote(*args: Any, **kwargs: Any) -> Any:
            return await self.server.call(method(*args, **kwargs))

        return remote

    def now(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call recorder method `name` from synchronous code and wait for it."""
        return self.server.call_sync(getattr(self.recorder, name)(*args, **kwargs))


@dataclass
class Service:
    app: FastAPI
    server: LoopServer
    settings: Settings
    engine: ServiceEngine  # writes and publishes in the service's process, as its engine would

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return "ws" + self.server.url[len("http") :]

    @property
    def ctx(self) -> AppContext:
        return self.app.state.ctx  # type: ignore[no-any-return]


@pytest.fixture
def service(make_settings: Callable[..., Settings], database_url: str) -> Iterator[Service]:
    """The whole app under uvicorn on loopback, on a fresh migrated database."""
    port = free_port()
    settings = make_settings(database_url=database_url, hostname=f"127.0.0.1:{port}")
    app = create_app(settings)
    server = LoopServer(app, port=port)
    with server:
        yield Service(app, server, settings, ServiceEngine(server, app.state.ctx))


@pytest.fixture
async def other_process(database_url: str) -> AsyncIterator[Recorder]:
    """An engine in another process: it writes to the shared database and publishes nowhere here."""
    engine = create_engine(database_url)
    try:
        yield Recorder(create_sessionmaker(engine))
    finally:
        await engine.dispose()


@pytest.fixture
def fast_feeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Database feeds poll every 0.1 s instead of every second, to keep tests short."""
    monkeypatch.setattr("app.streams.feeds.POLL_INTERVAL", 0.1)
