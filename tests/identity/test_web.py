"""did:web names and the address policy that keeps did:web fetches off private networks."""

from __future__ import annotations

import ipaddress

import pytest

from app.identity.exceptions import UnsupportedDid
from app.identity.web import is_public_address, parse_did_web


@pytest.mark.parametrize(
    ("did", "expected"),
    [
        ("did:web:example.com", ("example.com", None)),
        ("did:web:example.com%3A8443", ("example.com", 8443)),
        ("did:web:Spindle.Example.COM%3a443", ("spindle.example.com", 443)),
        ("did:web:localhost%3A6555", ("localhost", 6555)),
        ("did:web:203.0.113.9%3A80", ("203.0.113.9", 80)),
    ],
)
def test_parses_host_and_percent_encoded_port(did, expected):
    assert parse_did_web(did) == expected


@pytest.mark.parametrize(
    ("did", "reason"),
    [
        ("did:web:example.com:user:alice", "with a path is not supported"),
        ("did:web:example.com%3A8443:path", "with a path is not supported"),
        ("did:web:example.com%2Fpath", "percent-encode only the port separator"),
        ("did:web:example.com%3A99999", "not a host name"),
        ("did:web:example.com%3A", "not a host name"),
        ("did:web:", "not a host name"),
        ("did:web:under_score.example", "not a host name"),
    ],
)
def test_rejects_did_web_that_atproto_does_not_allow(did, reason):
    with pytest.raises(UnsupportedDid, match=reason):
        parse_did_web(did)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "2a01:4f8::1"])
def test_public_addresses_may_be_fetched(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2001:db8::1",
    ],
)
def test_private_loopback_link_local_and_reserved_addresses_are_refused(address):
    assert not is_public_address(ipaddress.ip_address(address))
