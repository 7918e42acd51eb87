"""did:web names and the addresses we are willing to fetch them from.

atproto allows only hostname-level did:web (`did:web:example.com`, with `%3A` for a port);
a path (`did:web:example.com:user:alice`) is not a valid atproto identity.
"""

from __future__ import annotations

import ipaddress
import re

from app.config import host_without_port, is_valid_host
from app.identity.exceptions import UnsupportedDid

_PORT_SEPARATOR = re.compile("%3a", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
