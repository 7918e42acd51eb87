"""Server-side request forgery through `knot` and through the token's issuer: refused, never fetched.

The would-be target is a loopback listener counting TCP connections (tests/support/counting.py);
every case asserts the right 4xx *and* that the listener saw zero connections. Knot cases run
against the dev-mode service (plain http and private addresses allowed for registered knots:
the most permissive setting); did:web and did:plc cases run against a production-mode service
whose PLC directory URL is the listener itself.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from app.runs.models import Pipeline
from app.runs.schemas import TRIGGER_NSID
from tests.hostile.conftest import Hostile, assert_xrpc_error, hostile_settings
from tests.runs.conftest import CI_YML, Spindle, serve
from tests.support.counting import CountingListener
from tests.support.db import new_database
from tests.support.keys import SigningKey, mint
from tests.support.plc import FakePlc
from tests.support.servers import ServerThread, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = SigningKey.generate("ES256K")


@pytest.fixture(scope="module")
def target() -> Iterator[CountingListener]:
    with CountingListener() as listener:
        yield listener


@pytest.fixture
def untouched(target: CountingListener) -> Iterator[CountingListener]:
    """The target, asserted to have seen no connection by the end of the test."""
    yield target
    assert target.connections == 0, f"the service connected to the target: {target.peers}"


def redirector(target: CountingListener) -> Starlette:
    """A server that answers everything with a redirect to the target."""

    async def bounce(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{target.url}{request.url.path}?{request.url.query}", status_code=307)

    return Starlette(routes=[Route("/{path:path}", bounce, methods=["GET", "POST"])])


def loopback_alias() -> str:
    """A name other than `localhost` that this host resolves to a loopback address (e.g. its own
    hostname, or an /etc/hosts alias); `localhost` itself when there is none."""
    candidates = [socket.gethostname()]
    hosts = Path("/etc/hosts")
    if hosts.exists():
        for line in hosts.read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            candidates += fields[1:]
    for name in candidates:
        if (
            name.lower() in ("localhost", "ip6-localhost", "ip6-loopback")
            or not name.replace("-", "").isalnum()
        ):
            continue
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
        except OSError:
            continue
        if addresses and all(a.startswith("127.") or a == "::1" for a in addresses):
            return name
    return "localhost"


# -- knot -----------------------------------------------------------------------------------


def knot_cases(port: int, knot_port: int) -> list[tuple[str, str, int, str]]:
    """(case, knot, status, message fragment): `port` is the target's, `knot_port` the registered knot's."""
    return [
        ("registered-ip-other-port", f"127.0.0.1:{port}", 403, "not registered"),
        ("localhost", f"localhost:{port}", 403, "not registered"),
        ("localhost-uppercase", f"LOCALHOST:{port}", 403, "not registered"),
        ("ipv6-loopback", f"[::1]:{port}", 403, "not registered"),
        ("ipv4-mapped-ipv6", f"[::ffff:127.0.0.1]:{port}", 403, "not registered"),
        ("unspecified", f"0.0.0.0:{port}", 403, "not registered"),
        ("short-ipv4", f"127.1:{port}", 403, "not registered"),
        ("decimal-ipv4", f"2130706433:{port}", 403, "not registered"),
        ("registered-ip-no-port", "127.0.0.1", 403, "not registered"),
        ("cloud-metadata", "169.254.169.254", 403, "not registered"),
        ("private-network", "10.0.0.1:80", 403, "not registered"),
        ("userinfo", f"a@127.0.0.1:{port}", 400, "knot must be a host"),
        (
            "userinfo-registered-then-target",
            f"127.0.0.1:{knot_port}@127.0.0.1:{port}",
            400,
            "knot must be a host",
        ),
        ("scheme", f"http://127.0.0.1:{port}", 400, "knot must be a host"),
        ("path", f"127.0.0.1:{port}/xrpc", 400, "knot must be a host"),
        ("fragment", f"127.0.0.1:{knot_port}#@127.0.0.1:{port}", 400, "knot must be a host"),
        ("backslash", f"127.0.0.1:{knot_port}\\@127.0.0.1:{port}", 400, "knot must be a host"),
        ("trailing-dot", f"127.0.0.1.:{port}", 400, "knot must be a host"),
        ("newline-smuggling", f"127.0.0.1:{knot_port}\nHost: 127.0.0.1:{port}", 400, "knot must be a host"),
        ("percent-encoded", f"127.0.0.1%3A{port}", 400, "knot must be a host"),
    ]


KNOT_CASES = [c[0] for c in knot_cases(1, 2)]


@pytest.mark.parametrize("case", KNOT_CASES)
async def test_a_knot_that_is_not_the_registered_one_is_never_contacted(
    hostile: Hostile, untouched: CountingListener, case: str
):
    cases = {c[0]: c[1:] for c in knot_cases(untouched.port, hostile.knot.server.port)}  # type: ignore[union-attr]
    knot, status, fragment = cases[case]
    hostile.knot.clear_requests()
    before = await hostile.snapshot()

    response = await hostile.spindle.trigger(hostile.repo.body(knot=knot), by=hostile.alice)

    body = assert_xrpc_error(response, status)
    assert fragment in body["message"], body
    await hostile.assert_unchanged(before)


async def test_a_registered_knot_that_redirects_inward_is_not_followed(
    hostile: Hostile, untouched: CountingListener
):
    with ServerThread(redirector(untouched)) as bouncer:
        git = hostile.knot.create_repo(hostile.alice.did, "bounced")
        sha = git.commit({".github/workflows/ci.yml": CI_YML})
        await hostile.spindle.register(knot=bouncer.host, did=hostile.alice.did, name="bounced")
        before = await hostile.snapshot()

        response = await hostile.spindle.trigger(
            hostile.repo.body(knot=bouncer.host, repoName="bounced", ref=sha), by=hostile.alice
        )

    body = assert_xrpc_error(response, 502, "UpstreamFailure")
    assert "HTTP 307" in body["message"], body
    assert (await hostile.snapshot())[:2] == before[:2]


async def test_a_dev_mode_did_web_host_that_redirects_inward_is_not_followed(
    hostile: Hostile, untouched: CountingListener
):
    with ServerThread(redirector(untouched)) as bouncer:
        did = f"did:web:localhost%3A{bouncer.port}"
        token = mint(KEY, iss=did, aud=hostile.spindle.settings.did, lxm=TRIGGER_NSID)
        before = await hostile.snapshot()

        response = await hostile.spindle.trigger(hostile.repo.body(actor=did), token=token)

    body = assert_xrpc_error(response, 401, "BadJwt")
    assert "redirects are not followed" in body["message"], body
    await hostile.assert_unchanged(before)


# -- the token's issuer: did:web and did:plc in production mode -----------------------------


@pytest.fixture(scope="module")
def production_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("production")
    new_database("sqlite", tmp)  # migrated here, outside the event loop
    return tmp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def production(target: CountingListener, production_tmp: Path, plc: FakePlc) -> AsyncIterator[Spindle]:
    """A spindle outside dev mode whose PLC directory is the target: any lookup would be counted."""
    tmp = production_tmp
    port = free_port()
    settings = hostile_settings(plc, tmp, port, dev=False, plc_url=target.url)
    async with serve(settings, port) as spindle:
        yield spindle


def issuer_cases(port: int) -> dict[str, str]:
    return {
        "loopback-ip": f"did:web:127.0.0.1%3A{port}",
        "loopback-ip-default-port": "did:web:127.0.0.1",
        "localhost": f"did:web:localhost%3A{port}",
        "localhost-lowercase-escape": f"did:web:localhost%3a{port}",
        "localhost-subdomain": f"did:web:spindle.localhost%3A{port}",
        "name-resolving-to-loopback": f"did:web:{loopback_alias()}%3A{port}",
        "short-ipv4": f"did:web:127.1%3A{port}",
        "decimal-ipv4": f"did:web:2130706433%3A{port}",
        "hex-ipv4": f"did:web:0x7f000001%3A{port}",
        "octal-ipv4": f"did:web:0177.0.0.1%3A{port}",
        "unspecified": f"did:web:0.0.0.0%3A{port}",
        "private-10": "did:web:10.0.0.1",
        "private-192": "did:web:192.168.1.1",
        "cgnat": "did:web:100.64.0.1",
        "cloud-metadata": "did:web:169.254.169.254",
        "bracketed-ipv6": f"did:web:[::1]%3A{port}",
        "did-web-path": f"did:web:127.0.0.1%3A{port}:user:alice",
        "percent-encoded-slash": f"did:web:127.0.0.1%3A{port}%2Fx",
        "plc-uppercase": "did:plc:ABCDEFGHIJKLMNOPQRSTUVWX",
        "plc-percent-dots": "did:plc:%2e%2e%2fadmin",
        "plc-too-long": "did:plc:" + "a" * 65,
        "plc-trailing-newline": "did:plc:abcdefghijklmnopqrstuvwx\n",
    }


ISSUER_CASES = list(issuer_cases(1))


@pytest.mark.parametrize("case", ISSUER_CASES)
async def test_an_issuer_naming_an_internal_address_is_refused_without_a_fetch(
    production: Spindle, untouched: CountingListener, case: str
):
    did = issuer_cases(untouched.port)[case]
    token = mint(KEY, iss=did, aud=production.settings.did, lxm=TRIGGER_NSID)
    body = {
        "knot": "knot.example.com",
        "pipelineRkey": "ssrf",
        "actor": "did:plc:abcdefghijklmnopqrstuvwx",
        "repoDid": "did:plc:abcdefghijklmnopqrstuvwx",
        "repoName": "repo",
        "ref": "a" * 40,
    }

    response = await production.trigger(body, token=token)

    assert_xrpc_error(response, 401, "BadJwt")
    assert await production.count(Pipeline) == 0


async def test_the_target_counts_every_connection_so_a_zero_means_something():
    import httpx

    with CountingListener() as probe:
        async with httpx.AsyncClient() as client:
            await client.get(probe.url + "/anything")
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient() as client:
                await client.get(probe.url.replace("http://", "https://"))

    assert probe.connections == 2
