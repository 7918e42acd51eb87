"""A local PLC directory speaking the real wire format: GET /{did} → the DID document JSON.

Tests register documents, rotate keys, count requests, and take it "down" (503) to check that
cached documents keep serving.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.keys import SigningKey, did_document


class FakePlc:
    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()
        self.down = False
        self.app = Starlette(routes=[Route("/{did:path}", self._get)])

    async def _get(self, request: Request) -> Response:
        did = request.path_params["did"]
        self.requests[did] += 1
        if self.down:
            return JSONResponse({"message": "unavailable"}, status_code=503)
        doc = self.documents.get(did)
        if doc is None:
            return JSONResponse({"message": f"DID not registered: {did}"}, status_code=404)
        return JSONResponse(doc)

    def register(self, key: SigningKey, did: str | None = None, **doc_kwargs: Any) -> str:
        """A new did:plc for `key` (or replace the document of `did`)."""
        did = did or "did:plc:" + "".join(
            secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24)
        )
        self.documents[did] = did_document(did, key, **doc_kwargs)
        return did
