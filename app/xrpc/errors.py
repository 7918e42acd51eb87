"""The XRPC error tree, rendered as `{"error", "message"}` with the right status code.

XrpcError
├── InvalidRequest (400)
│   └── PayloadTooLarge (413)
├── AuthenticationError (401, WWW-Authenticate: Bearer)
│     error: AuthenticationRequired | BadJwt | BadJwtSignature | JwtExpired
│            | BadJwtAudience | BadJwtLexiconMethod
├── Forbidden (403)
├── NotFound (404)
├── RateLimitExceeded (429, Retry-After)
├── MethodNotImplemented (501)
├── UpstreamFailure (502)
└── ServiceUnavailable (503, Retry-After)   also what a database outage becomes (see below)
"""

from __future__ import annotations

import logging
import math
import socket

import asyncpg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class XrpcError(Exception):
    """Raised below the HTTP edge; rendered as `{"error", "message"}` with `status_code`.

    A subclass names its status and default error: `class Gone(XrpcError, status=410)` (the
    error name defaults to the class name).
    """

    status_code = 500
    error = "InternalServerError"

    def __init_subclass__(cls, *, status: int | None = None, error: str | None = None) -> None:
        super().__init_subclass__()
        if status is not None:
            cls.status_code = status
            cls.error = error or cls.__name__

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if error is not None:
            self.error = error

    def headers(self) -> dict[str, str] | None:
        return None

    def to_response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "message": self.message},
            status_code=self.status_code,
            headers=self.headers(),
        )


class InvalidRequest(XrpcError, status=400):
    """A request (or a file it names) that is malformed or breaks a limit; the message names it."""


class PayloadTooLarge(InvalidRequest, status=413):
    """A body over the size the method accepts."""


class AuthenticationError(XrpcError, status=401, error="AuthenticationRequired"):
    """No token, or one that fails a check; `error` says which (BadJwt, JwtExpired ...)."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(XrpcError, status=403):
    """A valid token whose issuer may not do this: another actor, an unregistered repo, no rights."""


class NotFound(XrpcError, status=404):
    """No run, pipeline or record under the names asked for."""


class RateLimitExceeded(XrpcError, status=429):
    """Too many runs started, or waiting, for an actor or a repo: nothing was done, try again after
    `retry_after` seconds (the atproto services' answer to a rate limit)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class MethodNotImplemented(XrpcError, status=501):
    """An XRPC method this service does not have."""


class UpstreamFailure(XrpcError, status=502):
    """A knot that is unreachable, times out, fails or answers something that is not the format."""


class ServiceUnavailable(XrpcError, status=503):
    """The database is down or the service is stopping: nothing was done, try again shortly."""

    retry_after = 5

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


# A database that is down, restarting or out of connections. asyncpg raises its own errors (and
# plain OSErrors) while connecting; SQLAlchemy wraps what a driver reports once connected.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection free within the pool timeout
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, or "cannot connect now"
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
)
# A backend connection refused, reset, timed out or unresolvable: no route maps these itself
# (the knot and DID clients turn theirs into UpstreamFailure / 401 first).
BACKEND_UNAVAILABLE: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, socket.gaierror)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error","message"}`; a 500 never shows internals."""

    @app.exception_handler(XrpcError)
    async def _xrpc(_: Request, exc: XrpcError) -> JSONResponse:
        return exc.to_response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
            message = f"{where or 'request'}: {first.get('msg', 'invalid')}"
        else:
            message = "invalid request"
        return InvalidRequest(message).to_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and request.url.path.startswith("/xrpc/"):
            nsid = request.url.path[len("/xrpc/") :]
            return MethodNotImplemented(f"method {nsid} is not implemented by this service").to_response()
        if exc.status_code == 405:
            return InvalidRequest(
                f"HTTP method {request.method} is not allowed for {request.url.path}"
            ).to_response()
        names = {404: "NotFound", 413: "PayloadTooLarge", 415: "InvalidRequest"}
        error = names.get(
            exc.status_code, "InvalidRequest" if exc.status_code < 500 else "InternalServerError"
        )
        return JSONResponse(
            {"error": error, "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Internals (driver, address, SQL) go to the log, never to the client.
        log.warning("%s %s: backend unavailable: %r", request.method, request.url.path, exc)
        return ServiceUnavailable("the service is temporarily unavailable; try again shortly").to_response()

    async def _dbapi(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return await _unavailable(request, exc)
        return await _internal(request, exc)

    for kind in DATABASE_UNAVAILABLE + BACKEND_UNAVAILABLE:
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, _dbapi)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": "InternalServerError", "message": "internal server error"}, status_code=500
        )
