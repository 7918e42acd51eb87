"""did:web names and the addresses we are willing to fetch them from.

atproto allows only hostname-level did:web (`did:web:example.com`, with `%3A` for a port);
a path (`did:web:example.com:user:alice`) is not a valid atproto identity.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable

from app.config import host_without_port, is_valid_host
from app.identity.exceptions import UnsupportedDid

_PORT_SEPARATOR = re.compile("%3a", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HostResolver = Callable[[str, int], Awaitable[list[str]]]


class HostRefused(Exception):
    """A host we will not connect to: it does not resolve, or to an address that is not allowed.
    `problem` is said of the host (callers name what the host is for)."""

    def __init__(self, problem: str, *, resolves: bool) -> None:
        super().__init__(problem)
        self.problem = problem
        self.resolves = resolves  # False: no address at all (may be transient); True: refused


async def checked_addresses(
    host: str,
    port: int,
    *,
    resolve_host: HostResolver,
    allowed: Callable[[IPAddress], bool] = lambda address: is_public_address(address),
) -> list[str]:
    """Every address of `host`, each one `allowed` (public by default), to connect to exactly those
    (not to what a second DNS lookup says: DNS rebinding). HostRefused says why not."""
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            addresses = await resolve_host(host, port)
        except OSError as exc:
            raise HostRefused(f"{host} does not resolve: {exc}", resolves=False) from None
    if not addresses:
        raise HostRefused(f"{host} does not resolve", resolves=False)
    for address in addresses:
        if not allowed(ipaddress.ip_address(address)):
            raise HostRefused(f"{host} resolves to {address}, which is not a public address", resolves=True)
    return addresses


def parse_did_web(did: str) -> tuple[str, int | None]:
    """`did:web:example.com%3A8443` → ("example.com", 8443); UnsupportedDid for paths and junk."""
    msid = did[len("did:web:") :]
    if ":" in msid:
        raise UnsupportedDid(did, "did:web with a path is not supported by atproto")
    authority = _PORT_SEPARATOR.sub(":", msid)
    if "%" in authority:
        raise UnsupportedDid(did, "a did:web may percent-encode only the port separator (%3A)")
    if authority.startswith("[") or not is_valid_host(authority):
        raise UnsupportedDid(did, f"{authority!r} is not a host name with an optional port")
    host = host_without_port(authority).lower()
    port = int(authority.rsplit(":", 1)[1]) if ":" in authority else None
    return host, port


def is_public_address(address: IPAddress) -> bool:
    """True for globally routable unicast addresses: what a did:web host must resolve to outside dev mode."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address embedded in IPv6 reaches that IPv4 host: judge the embedded one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if address.is_site_local:
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
    )
