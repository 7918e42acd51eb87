"""The network policy of job containers, enforced on the host with nftables (docs/execution.md).

A job reaches the internet, and nothing of this host or its networks: not the loopback, private
(RFC 1918, CGNAT, unique-local) or link-local addresses (cloud metadata at 169.254.169.254), so
never the database, the PLC, the spindle's own API or anything the operator keeps on the LAN.

Every job gets a network of its own whose bridge is named with BRIDGE_PREFIX (the engines name it
as we ask through `com.docker.network.bridge.name`), so one static table matches every job:

    input    packets from a job bridge to this host: only DNS to the bridge's own address
             (Podman's aardvark-dns answers there) is accepted, everything else is dropped
    forward  packets from a job bridge routed anywhere: dropped when the destination is a
             loopback, private, link-local, multicast or reserved address

The chains hook in before the engines' own filter chains (priority -10): in nftables a packet
must pass every base chain of its hook, so the engines' accept rules cannot undo these drops.

The table is shared by every spindle process on the host. It is asserted (created or rewritten,
atomically) before each job container starts, and removed at shutdown only when no job bridge is
left; both happen under one host-wide lock file, so a process stopping never removes the table
from under a job another process is starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

TABLE = "spindle_jobs"
BRIDGE_PREFIX = "spj"  # + up to 12 more characters: Linux interface names are at most 15
LOCK_PATH = Path("/run/spindle-jobs-firewall.lock")

BLOCKED_V4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local: cloud metadata services
    "172.16.0.0/12",
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/3",  # multicast and reserved
)
BLOCKED_V6 = (
    "::/127",  # unspecified and loopback
    "::ffff:0:0/96",  # IPv4-mapped: would reach the IPv4 addresses above
    "64:ff9b:1::/48",  # local-use NAT64
    "fc00::/7",  # unique-local
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated, still routable on old networks)
    "ff00::/8",  # multicast
)


class FirewallUnavailable(RuntimeError):
    """The host policy cannot be installed: no nft, or not allowed to change the ruleset."""


def ruleset() -> str:
    """The nft script that creates or rewrites the table in one transaction."""
    bridges = f'"{BRIDGE_PREFIX}*"'
    return f"""
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  set blocked4 {{ type ipv4_addr; flags interval; elements = {{ {", ".join(BLOCKED_V4)} }} }}
  set blocked6 {{ type ipv6_addr; flags interval; elements = {{ {", ".join(BLOCKED_V6)} }} }}
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname {bridges} meta l4proto {{ udp, tcp }} th dport 53 fib daddr . iif type local accept
    iifname {bridges} drop
  }}
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname {bridges} ip daddr @blocked4 drop
    iifname {bridges} ip6 daddr @blocked6 drop
    iifname {bridges} oifname {bridges} drop
  }}
}}
"""


async def _nft(script: str) -> None:
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    if nft is None:
        raise FirewallUnavailable("nft (Debian package nftables) is not installed: run scripts/setup")
    process = await asyncio.create_subprocess_exec(
        nft,
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate(script.encode())
    if process.returncode != 0:
        raise FirewallUnavailable(
            f"nft refused the job network policy: {output.decode(errors='replace').strip()}"
        )


@contextlib.asynccontextmanager
async def _host_lock() -> AsyncIterator[None]:
    path = LOCK_PATH if os.access(LOCK_PATH.parent, os.W_OK) else Path("/tmp") / LOCK_PATH.name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # flock blocks: taken in a thread so that the event loop never waits on another process.
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def job_bridges() -> list[str]:
    """The job bridges that exist on this host now."""
    try:
        return sorted(name for name in os.listdir("/sys/class/net") if name.startswith(BRIDGE_PREFIX))
    except OSError:
        return []


class Firewall:
    """Installs the policy before each job starts; removes it when the last job bridge is gone."""

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Hold while starting a job container: the table is in place, and stays."""
        async with _host_lock():
            await _nft(ruleset())
            yield

    async def remove_if_unused(self) -> bool:
        """At shutdown: drop the table unless a job (of any spindle on this host) still runs."""
        async with _host_lock():
            if job_bridges():
                return False
            with contextlib.suppress(FirewallUnavailable):
                await _nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n")
            return True
