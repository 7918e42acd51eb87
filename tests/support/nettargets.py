"""Listeners a job must and must not reach, on test hosts this fixture makes (root only).

    public      198.51.100.10:<port> (TEST-NET-2) on a host of its own: a network namespace
                joined to this one by a veth pair and routed from here, as the internet would be
    private     10.213.250.1:<port>, an RFC 1918 address of this host (on its loopback device)
    lan         10.213.251.10:<port> on the same test host as `public`: a private address
                routed away from this host, as a machine on the operator's LAN would be
    loopback    127.0.0.1:<port> on this host
    host        this host's own address on its default route, if it has one

Each answers one line ("public", "private" ...) to any TCP connection, so a step proves it
reached a listener by printing the answer. Everything is removed at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

PUBLIC_NET = "198.51.100"
PRIVATE_ADDRESS = "10.213.250.1"
LAN_NET = "10.213.251"
LISTENER = r"""
import socket, sys
server = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 0))
server.listen(64)
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    try:
        conn.sendall(sys.argv[2].encode() + b"\n")
    finally:
        conn.close()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Targets:
    public: tuple[str, int]
    private: tuple[str, int]
    lan: tuple[str, int]
    loopback: tuple[str, int]
    host: tuple[str, int] | None
    processes: list[subprocess.Popen[str]] = field(default_factory=list)


def _listen(address: str, answer: str, *, netns: str | None = None) -> tuple[subprocess.Popen[str], int]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    process = subprocess.Popen(
        [*prefix, sys.executable, "-c", LISTENER, address, answer], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return process, port


def _host_address() -> str | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("198.51.100.99", 9))  # no packet is sent: this only picks a source address
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith(("127.", PUBLIC_NET)) else address


def _remove_leftovers() -> None:
    """What a session killed before its clean-up left: test hosts and links named like ours."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("spt-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for name in os.listdir("/sys/class/net"):
        if name.startswith("sptv"):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


@pytest.fixture(scope="session")
def net_targets() -> Iterator[Targets]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the network isolation tests need root and iproute2 (CI runs as root)")
    _remove_leftovers()
    tag = uuid.uuid4().hex[:6]
    netns, outside, inside = f"spt-{tag}", f"sptv{tag}", f"sptw{tag}"
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", netns)
        _ip("addr", "add", f"{PUBLIC_NET}.1/24", "dev", outside)
        _ip("addr", "add", f"{LAN_NET}.1/24", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", netns, "addr", "add", f"{PUBLIC_NET}.10/24", "dev", inside)
        _ip("-n", netns, "addr", "add", f"{LAN_NET}.10/24", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "route", "add", "default", "via", f"{PUBLIC_NET}.1")
        _ip("addr", "replace", f"{PRIVATE_ADDRESS}/32", "dev", "lo")
        processes = []
        public, public_port = _listen(f"{PUBLIC_NET}.10", "public", netns=netns)
        private, private_port = _listen(PRIVATE_ADDRESS, "private")
        lan, lan_port = _listen(f"{LAN_NET}.10", "lan", netns=netns)
        loopback, loopback_port = _listen("127.0.0.1", "loopback")
        processes += [public, private, lan, loopback]
        host_address = _host_address()
        host: tuple[str, int] | None = None
        if host_address is not None:
            listener, port = _listen(host_address, "host")
            processes.append(listener)
            host = (host_address, port)
        targets = Targets(
            public=(f"{PUBLIC_NET}.10", public_port),
            private=(PRIVATE_ADDRESS, private_port),
            lan=(f"{LAN_NET}.10", lan_port),
            loopback=("127.0.0.1", loopback_port),
            host=host,
            processes=processes,
        )
        yield targets
    finally:
        for process in locals().get("processes", []):
            process.kill()
            process.wait()
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "addr", "del", f"{PRIVATE_ADDRESS}/32", "dev", "lo"], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
