"""How uvicorn serves the app: its settings in one place (`spindle serve` and the tests use them),
and an HTTP protocol that gives each request a deadline for its headers and one for its body.

uvicorn times out only idle keep-alive connections: a client that opens a connection and sends
half a request line, or headers without their end, or a body one byte a minute, holds a socket
(and its file descriptor) for ever. `guarded_protocol` subclasses uvicorn's httptools protocol:

    connection made / previous response sent / first byte of a request → header timer
    headers complete → body timer (none for a WebSocket upgrade, which leaves this protocol)
    body complete → no timer (the app's own time is not limited here)

A header timeout is answered `408 Request Timeout` and the connection closed; a body timeout
closes the connection (the app, waiting for the body, sees the client gone).
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings

_TIMEOUT_BODY = b'{"error":"RequestTimeout","message":"the request was not received in time"}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _TIMEOUT_BODY
)


class _GuardedProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    body_timeout = 30.0

    _read_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, *, headers: bool) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._timed_out, headers)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self, headers: bool) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        # metric: connections closed for a header / body timeout
        if headers and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_TIMEOUT_RESPONSE)
        elif self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, headers=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:
            self._arm(self.header_timeout, headers=True)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.body_timeout, headers=False)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The keep-alive timer (uvicorn's) closes an idle connection; once a next request starts,
        # data_received cancels that timer and on_message_begin arms ours.


def guarded_protocol(*, header_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these deadlines for a request's headers and its body."""
    return type(
        "GuardedHttpToolsProtocol",
        (_GuardedProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of uvicorn.run / uvicorn.Config for serving the app (without host, port)."""
    return {
        "http": guarded_protocol(header_timeout=settings.header_timeout, body_timeout=settings.body_timeout),
        "proxy_headers": True,
        "ws_max_size": 1 << 20,
        # Log frames are small and many: compressing each costs more CPU than it saves.
        "ws_per_message_deflate": False,
    }


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit: every connection and
    watcher holds a descriptor, and a soft limit of 1024 is what many systems start with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
        except (ValueError, OSError):
            return soft
    return soft
