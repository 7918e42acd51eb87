"""A would-be SSRF target: a loopback TCP listener that counts every connection made to it.

Counting at the TCP level (not HTTP) catches any attempt: plain HTTP, a TLS handshake, a
WebSocket upgrade. Each connection gets a short `404` answer and is closed.

    with CountingListener() as target:      # 127.0.0.1:<port>, and [::1]:<same port> when possible
        ... point the service at target.host / target.port ...
        assert target.connections == 0
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from tests.support.servers import free_port

ANSWER = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class CountingListener:
    def __init__(self) -> None:
        self.port = free_port()
        self.ipv6 = ipv6_loopback_available()
        self.connections = 0
        self.peers: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.peers.append(writer.get_extra_info("peername"))
        try:
            await asyncio.wait_for(reader.read(4096), 1)
            writer.write(ANSWER)
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _serve(self) -> None:
        self._servers.append(await asyncio.start_server(self._handle, "127.0.0.1", self.port))
        if self.ipv6:
            try:
                self._servers.append(await asyncio.start_server(self._handle, "::1", self.port))
            except OSError:
                self.ipv6 = False
        self._ready.set()
        await asyncio.gather(*(server.serve_forever() for server in self._servers), return_exceptions=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    def start(self) -> CountingListener:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the counting listener did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None:
            for server in self._servers:
                loop.call_soon_threadsafe(server.close)
        self._thread.join(timeout=10)

    def __enter__(self) -> CountingListener:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
