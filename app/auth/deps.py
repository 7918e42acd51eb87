"""Service auth as a FastAPI dependency: routes declare who may call them, never check tokens themselves.

In a router:

    NSID = "com.publicdomainrelay.temp.tangled.spindle.trigger"
    ActorDep = Annotated[str, Depends(service_auth(NSID))]

    @router.post(f"/xrpc/{NSID}")
    async def trigger(actor: ActorDep, ...) -> ...:   # actor: the verified issuer DID

FastAPI runs it before validating a declared body model, but it reads (and rejects malformed)
JSON before any dependency: a route that must answer 401 ahead of every body detail (SPEC:
authentication first) takes the raw `Request` and parses the body after this dependency ran.
`iss == actor` and repo rights are the route's business (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi.requests import HTTPConnection

from app.auth.verifier import ServiceAuthVerifier


def service_auth(nsid: str) -> Callable[..., Awaitable[str]]:
    """A dependency that verifies the request's service-auth JWT for method `nsid` and returns its iss."""

    async def verified_issuer(conn: HTTPConnection) -> str:
        # The context straight from the app, not through CtxDep: each dependency level costs
        # FastAPI tens of microseconds per request, and this one guards the trigger's hot path.
        verifier: ServiceAuthVerifier = conn.app.state.ctx.verifier
        return await verifier.verify(conn.headers.get("authorization"), lxm=nsid)

    verified_issuer.__name__ = f"service_auth[{nsid}]"
    return verified_issuer
