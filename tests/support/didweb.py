"""A did:web host on loopback: serves `/.well-known/did.json` over real HTTP (or HTTPS).

Its DID is `did:web:localhost%3A<port>`, which the resolver fetches over plain http in dev mode.
Tests replace the document, break the answer on purpose (status, raw body, chunked, slow) and
count requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.keys import SigningKey, did_document
from tests.support.servers import ServerThread


class DidWebHost:
    def __init__(self, **server_config: Any) -> None:
        self.document: dict[str, Any] | None = None
        self.status = 200
        self.body: bytes | None = None  # sent instead of the document when set
        self.chunked = False  # stream the body without a Content-Length
        self.headers: dict[str, str] = {}
        self.delay = 0.0  # seconds to wait before answering
        self.requests: list[Request] = []
        self.app = Starlette(routes=[Route("/.well-known/did.json", self._get)])
        # A stalled answer must not hold up shutdown.
        server_config.setdefault("timeout_graceful_shutdown", 1)
        self.server = ServerThread(self.app, **server_config)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def did(self) -> str:
        return self.did_for("localhost")

    def did_for(self, name: str) -> str:
        """The did:web naming this host's port under `name` (e.g. a name a test resolver maps here)."""
        return f"did:web:{name}%3A{self.port}"

    def serve(self, key: SigningKey, *, did: str | None = None, **doc_kwargs: Any) -> str:
        """Serve a document for `key` (under this host's localhost DID unless `did` is given)."""
        did = did or self.did
        self.document = did_document(did, key, **doc_kwargs)
        return did

    async def _get(self, request: Request) -> Response:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.body is not None or self.chunked:
            body = self.body if self.body is not None else bytes(JSONResponse(self.document).body)
            if self.chunked:
                return StreamingResponse(_chunks(body), status_code=self.status, headers=self.headers)
            return Response(body, status_code=self.status, headers=self.headers)
        if self.document is None:
            return JSONResponse({"error": "no document"}, status_code=404)
        return JSONResponse(self.document, status_code=self.status, headers=self.headers)

    def __enter__(self) -> DidWebHost:
        self.server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop()


async def _chunks(body: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]
