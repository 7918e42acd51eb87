"""Soak: a real `spindle serve` under a steady trigger rate, good and bad requests mixed, for a minute.

    .venv/bin/python bench/soak.py [--seconds 60] [--rate 50] [--database sqlite|postgres] [--max-jobs 2]

The service is the `spindle` console script in a subprocess (SQLite in its data directory, or a
throwaway PostgreSQL server with --database postgres); the PLC directory and a git knot (a repo
with one quick `echo` workflow) run in this process. Requests are sent open-loop at --rate per
second, each with a freshly minted token:

    70 %  a valid trigger (new record key)                 → 200
    10 %  a bad token (expired, other audience, forged)     → 401
    10 %  a bad body (branch name as ref, not JSON, ...)    → 400
    10 %  a repo that is not registered                     → 403

The engine runs every accepted workflow for real (bubblewrap when available); at this rate it
queues. Printed: throughput, latency percentiles, unexpected answers (any status other than the
expected one, any 5xx, any timeout or connection error: must be 0, else the exit code is 1), the
service's resident memory at the start and the end, and how far the queue got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.runs.schemas import TRIGGER_NSID  # noqa: E402
from tests.support.keys import SigningKey, mint  # noqa: E402
from tests.support.knot import TestKnot  # noqa: E402
from tests.support.plc import FakePlc  # noqa: E402
from tests.support.process import SpindleProcess  # noqa: E402
from tests.support.servers import ServerThread, free_port  # noqa: E402

OWNER = "did:plc:soakowneraaaaaaaaaaaaaaaa"
WORKFLOW = """\
on: workflow_dispatch
jobs:
  echo:
    runs-on: ubuntu-latest
    steps:
      - run: echo "soak run $GITHUB_RUN_ID"
"""
MIX = [("good", 70), ("bad-token", 10), ("bad-body", 10), ("unregistered", 10)]
EXPECTED = {"good": 200, "bad-token": 401, "bad-body": 400, "unregistered": 403}


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind, _ in MIX})
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Soak:
    def __init__(
        self, *, service: SpindleProcess, did: str, knot: str, key: SigningKey, actor: str, sha: str
    ):
        self.service = service
        self.did = did
        self.knot = knot
        self.key = key
        self.actor = actor
        self.sha = sha
        self.results = Results()
        self.stranger = SigningKey.generate("ES256K")

    def body(self, **changes: Any) -> dict[str, Any]:
        body = {
            "knot": self.knot,
            "pipelineRkey": "soak" + secrets.token_hex(8),
            "actor": self.actor,
            "repoDid": self.actor,
            "repoName": "soak",
            "ref": self.sha,
        }
        body.update(changes)
        return body

    def token(self, **kwargs: Any) -> str:
        kwargs.setdefault("aud", self.did)
        kwargs.setdefault("key", self.key)
        key = kwargs.pop("key")
        return mint(key, iss=self.actor, lxm=TRIGGER_NSID, **kwargs)

    def request(self, kind: str) -> tuple[dict[str, str], bytes]:
        headers = {"content-type": "application/json"}
        body: Any = self.body()
        if kind == "bad-token":
            now = int(time.time())
            token = random.choice(
                [
                    self.token(iat=now - 120, exp=now - 60),
                    self.token(aud="did:web:someone.else.example"),
                    self.token(key=self.stranger),
                ]
            )
        else:
            token = self.token()
        if kind == "bad-body":
            body = random.choice([self.body(ref="main"), self.body(knot="http://evil/"), "{not json"])
        elif kind == "unregistered":
            body = self.body(repoName="not-registered")
        headers["authorization"] = f"Bearer {token}"
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return headers, content

    async def one(self, client: httpx.AsyncClient, kind: str) -> None:
        headers, content = self.request(kind)
        started = time.perf_counter()
        try:
            response = await client.post(
                f"{self.service.url}/xrpc/{TRIGGER_NSID}", content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            self.results.unexpected.append(f"{kind}: {type(exc).__name__} {exc}")
            return
        self.results.latencies[kind].append(time.perf_counter() - started)
        self.results.statuses[(kind, response.status_code)] += 1
        if response.status_code != EXPECTED[kind]:
            self.results.unexpected.append(f"{kind}: {response.status_code} {response.text[:200]}")

    async def run(self, *, seconds: float, rate: float) -> float:
        kinds = [kind for kind, weight in MIX for _ in range(weight)]
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            tasks: list[asyncio.Task[None]] = []
            start = time.perf_counter()
            sent = 0
            while (elapsed := time.perf_counter() - start) < seconds:
                due = int(elapsed * rate) + 1
                while sent < due:
                    tasks.append(asyncio.create_task(self.one(client, random.choice(kinds))))
                    sent += 1
                await asyncio.sleep(max(0.0, (sent / rate) - (time.perf_counter() - start)))
            await asyncio.gather(*tasks)
            return time.perf_counter() - start


def queue_state(database_url: str) -> Counter[str]:
    if not database_url.startswith("sqlite"):
        return Counter()
    path = database_url.split("///", 1)[1]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return Counter(
            dict(db.execute("SELECT status, count(*) FROM workflow_run GROUP BY status").fetchall())
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (open loop)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--max-jobs", type=int, default=2)
    args = parser.parse_args()
    random.seed(1)

    with tempfile.TemporaryDirectory(prefix="spindle-soak-") as tmp_name:
        tmp = Path(tmp_name)
        pg = None
        if args.database == "postgres":
            from tests.support.pgserver import PgServer

            pg = PgServer().create()
            database_url = pg.database()
        else:
            database_url = f"sqlite+aiosqlite:///{tmp / 'spindle.db'}"
        plc = FakePlc()
        key = SigningKey.generate("ES256K")
        actor = plc.register(key)
        try:
            with ServerThread(plc.app) as plc_server, TestKnot(tmp / "knot") as knot:
                git = knot.create_repo(actor, "soak")
                sha = git.commit({".github/workflows/echo.yml": WORKFLOW})
                port = free_port()
                hostname = f"127.0.0.1:{port}"
                service = SpindleProcess(
                    env={
                        "SPINDLE_HOSTNAME": hostname,
                        "SPINDLE_OWNER": OWNER,
                        "SPINDLE_DEV": "true",
                        "SPINDLE_PLC_URL": plc_server.url,
                        "SPINDLE_DATA_DIR": str(tmp / "data"),
                        "SPINDLE_DATABASE_URL": database_url,
                        "SPINDLE_MAX_JOBS": str(args.max_jobs),
                        "SPINDLE_LOG_LEVEL": "warning",
                    },
                    port=port,
                    log=tmp / "serve.log",
                )
                service.cli("repo", "add", "--knot", knot.host, "--repo-did", actor, "--name", "soak")
                service.start()
                assert service.proc is not None
                soak = Soak(
                    service=service,
                    did=f"did:web:{hostname.replace(':', '%3A')}",
                    knot=knot.host,
                    key=key,
                    actor=actor,
                    sha=sha,
                )
                try:
                    # One trigger warms the caches (DID document, workflow file) before the clock starts.
                    asyncio.run(soak.run(seconds=0.5, rate=4))
                    soak.results = Results()
                    rss_start = rss_mib(service.proc.pid)
                    elapsed = asyncio.run(soak.run(seconds=args.seconds, rate=args.rate))
                    rss_end = rss_mib(service.proc.pid)
                    queue = queue_state(database_url)
                finally:
                    service.stop()
                    log_tail = service.output()
        finally:
            if pg is not None:
                pg.destroy()

    results = soak.results
    every = [v for values in results.latencies.values() for v in values]
    answered = sum(results.statuses.values())
    print(f"soak: {args.seconds:g} s at {args.rate:g}/s on {args.database}, SPINDLE_MAX_JOBS={args.max_jobs}")
    print(f"  requests answered   {answered} in {elapsed:.1f} s = {answered / elapsed:.1f}/s")
    print(
        f"  latency (all)       p50 {percentile(every, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(every, 0.99) * 1000:.1f} ms, max {max(every) * 1000:.1f} ms"
    )
    for kind, _ in MIX:
        values = results.latencies[kind]
        print(
            f"  {kind:<18}  n={len(values):<5} p50 {percentile(values, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(values, 0.99) * 1000:.1f} ms, mean {statistics.fmean(values) * 1000:.1f} ms"
            if values
            else f"  {kind:<18}  n=0"
        )
    print(f"  statuses            {dict(sorted(results.statuses.items()))}")
    print(f"  unexpected          {len(results.unexpected)}")
    for line in results.unexpected[:10]:
        print(f"    {line}")
    print(f"  service RSS         {rss_start:.0f} MiB at start, {rss_end:.0f} MiB at end")
    if queue:
        print(f"  workflow runs       {dict(queue)} (the engine's backlog when the load stopped)")
    if results.unexpected:
        print("service log (tail):\n" + log_tail[-3000:])
    return 1 if results.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
