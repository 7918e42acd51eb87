"""Service auth for routes: routes declare who may call them, never check tokens themselves.

In a FastAPI router, as a dependency:

    NSID = "com.publicdomainrelay.temp.tangled.spindle.trigger"
    ActorDep = Annotated[str, Depends(service_auth(NSID))]

    @router.post(f"/xrpc/{NSID}")
    async def trigger(actor: ActorDep, ...) -> ...:   # actor: the verified issuer DID

In a plain Starlette endpoint (the trigger's hot path), first thing:

    actor = await authenticate(request, NSID)

FastAPI runs a dependency before validating a declared body model, but it reads (and rejects
malformed) JSON before any dependency: a route that must answer 401 ahead of every body detail
(docs/trigger.md: authentication first) takes the raw `Request` and parses the body after authenticating.
`iss == actor` and repo rights are the route's business (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection

from app.auth.verifier import ServiceAuthVerifier


async def authenticate(conn: HTTPConnection, nsid: str) -> str:
    """The issuer DID of the request's service-auth JWT for method `nsid`; 401 otherwise."""
    verifier: ServiceAuthVerifier = conn.app.state.ctx.verifier
    return await verifier.verify(conn.headers.get("authorization"), lxm=nsid)


def service_auth(nsid: str) -> Callable[..., Awaitable[str]]:
    """A dependency that verifies the request's service-auth JWT for method `nsid` and returns its iss."""

    async def verified_issuer(conn: HTTPConnection) -> str:
        return await authenticate(conn, nsid)

    verified_issuer.__name__ = f"service_auth[{nsid}]"
    return verified_issuer
