"""Soak: a real `spindle serve` with honest users, first alone, then beside abusers, in one run.

    .venv/bin/python bench/soak.py [--seconds 45] [--rate 3] [--database sqlite|postgres]
                                   [--max-jobs 2] [--no-engine] [--seed-events 100000]

The service is the `spindle` console script in a subprocess with its default limits (SQLite in
its data directory, or a throwaway PostgreSQL server with --database postgres); the PLC
directory and a git knot run in this process; jobs run in the test Podman engine with its small
image (tests/support/podman.py), or fail at once with --no-engine. Two phases of --seconds each:

  quiet     honest users only
  abused    the same honest users, and beside them (in a separate process, so that the abusers'
            client work does not slow the honest client's clock):
              flood      one repo's owner sends 100 triggers a second (--flood-rate)
              idle       300 sockets that send half a request line and nothing more, reopened
                         whenever the service closes them
              watchers   /events WebSockets opened and held from one address, as many as taken
              replay     20 clients (20 addresses) replaying /events?cursor=0 over the seeded
                         events, reconnecting whenever closed
              issuers    50 requests/s with tokens from made-up did:plc issuers

Honest users: 10 actors, each with their own repo, sending --rate valid triggers a second in
all (70 %), with bad tokens, bad bodies and unregistered repos mixed in (10 % each), open loop;
and a /healthz probe every 100 ms. Printed: honest p50/p99 per phase (the target is an abused p99
within 2x the quiet one), unexpected answers to honest requests (must be 0, else exit code 1),
what each abuser got, and how many PLC look-ups the made-up issuers caused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import resource
import secrets
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

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
HONEST_ACTORS = 10
MIX = [("good", 70), ("bad-token", 10), ("bad-body", 10), ("unregistered", 10)]
EXPECTED = {"good": 200, "bad-token": 401, "bad-body": 400, "unregistered": 403, "healthz": 200}
PHASES = ("quiet", "abused")


@dataclass
class Actor:
    did: str
    key: SigningKey
    repo: str
    sha: str = ""


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in EXPECTED})
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Target:
    url: str
    port: int
    did: str
    knot: str

    def body(self, actor: Actor, **changes: Any) -> dict[str, Any]:
        body = {
            "knot": self.knot,
            "pipelineRkey": "soak" + secrets.token_hex(8),
            "actor": actor.did,
            "repoDid": actor.did,
            "repoName": actor.repo,
            "ref": actor.sha,
        }
        body.update(changes)
        return body

    def token(self, actor: Actor, **kwargs: Any) -> str:
        kwargs.setdefault("aud", self.did)
        key = kwargs.pop("key", actor.key)
        iss = kwargs.pop("iss", actor.did)
        return mint(key, iss=iss, lxm=TRIGGER_NSID, **kwargs)


# -- honest users -------------------------------------------------------------------------------


class Honest:
    def __init__(self, target: Target, actors: list[Actor]) -> None:
        self.target = target
        self.actors = actors
        self.stranger = SigningKey.generate("ES256K")
        self.results = Results()

    def request(self, kind: str) -> tuple[dict[str, str], bytes]:
        actor = random.choice(self.actors)
        body: Any = self.target.body(actor)
        if kind == "bad-token":
            now = int(time.time())
            token = random.choice(
                [
                    self.target.token(actor, iat=now - 120, exp=now - 60),
                    self.target.token(actor, aud="did:web:someone.else.example"),
                    self.target.token(actor, key=self.stranger),
                ]
            )
        else:
            token = self.target.token(actor)
        if kind == "bad-body":
            body = random.choice(
                [
                    self.target.body(actor, ref="main"),
                    self.target.body(actor, knot="http://evil/"),
                    "{not json",
                ]
            )
        elif kind == "unregistered":
            body = self.target.body(actor, repoName="not-registered")
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        return headers, body.encode() if isinstance(body, str) else json.dumps(body).encode()

    async def one(self, client: httpx.AsyncClient, kind: str) -> None:
        started = time.perf_counter()
        try:
            if kind == "healthz":
                response = await client.get(f"{self.target.url}/healthz")
            else:
                headers, content = self.request(kind)
                response = await client.post(
                    f"{self.target.url}/xrpc/{TRIGGER_NSID}", content=content, headers=headers
                )
        except httpx.HTTPError as exc:
            self.results.unexpected.append(f"{kind}: {type(exc).__name__} {exc}")
            return
        self.results.latencies[kind].append(time.perf_counter() - started)
        self.results.statuses[(kind, response.status_code)] += 1
        if response.status_code != EXPECTED[kind]:
            self.results.unexpected.append(f"{kind}: {response.status_code} {response.text[:200]}")

    async def warm(self) -> None:
        """One trigger per actor: DID documents and workflow files cached before the clock starts."""
        actors = self.actors
        async with httpx.AsyncClient(timeout=30) as client:
            for actor in actors:
                self.actors = [actor]
                await self.one(client, "good")
        self.actors = actors

    async def run(self, *, seconds: float, rate: float) -> Results:
        self.results = Results()
        kinds = [kind for kind, weight in MIX for _ in range(weight)]
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            tasks: list[asyncio.Task[None]] = []
            start = time.perf_counter()
            sent = probes = 0
            while (elapsed := time.perf_counter() - start) < seconds:
                while sent < int(elapsed * rate) + 1:
                    tasks.append(asyncio.create_task(self.one(client, random.choice(kinds))))
                    sent += 1
                while probes < int(elapsed * 10) + 1:
                    tasks.append(asyncio.create_task(self.one(client, "healthz")))
                    probes += 1
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
        return self.results


# -- abusers (in a child process) ---------------------------------------------------------------


async def flood(target: Target, actor: Actor, stop: float, rate: float, tally: Counter[str]) -> None:
    async def one(client: httpx.AsyncClient) -> None:
        headers = {"content-type": "application/json", "authorization": f"Bearer {target.token(actor)}"}
        try:
            response = await client.post(
                f"{target.url}/xrpc/{TRIGGER_NSID}", json=target.body(actor), headers=headers
            )
            tally[f"flood {response.status_code}"] += 1
        except httpx.HTTPError as exc:
            tally[f"flood {type(exc).__name__}"] += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
        tasks, sent, start = [], 0, time.monotonic()
        while (now := time.monotonic()) < stop:
            while sent < int((now - start) * rate) + 1:
                tasks.append(asyncio.create_task(one(client)))
                sent += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)


async def idle(target: Target, stop: float, tally: Counter[str]) -> None:
    async def one() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
                writer.write(b"GET /hea")
                tally["idle opened"] += 1
                answer = await asyncio.wait_for(reader.read(), max(0.1, stop - time.monotonic()))
                tally["idle closed by the service" + (" (408)" if b" 408 " in answer[:20] else "")] += 1
                writer.close()
            except (TimeoutError, OSError):
                pass

    await asyncio.gather(*(one() for _ in range(300)))


async def watchers(target: Target, stop: float, tally: Counter[str]) -> None:
    held = []
    while time.monotonic() < stop:
        try:
            held.append(await connect(f"ws://127.0.0.1:{target.port}/events", local_addr=("127.0.2.1", 0)))
            tally["watchers accepted"] += 1
        except InvalidStatus as exc:
            tally[f"watchers refused {exc.response.status_code}"] += 1
            await asyncio.sleep(0.05)
        except (OSError, WebSocketException):
            tally["watchers failed"] += 1
    for websocket in held:
        await websocket.close()


async def replay(target: Target, stop: float, tally: Counter[str], address: str) -> None:
    while time.monotonic() < stop:
        try:
            async with connect(
                f"ws://127.0.0.1:{target.port}/events?cursor=0", local_addr=(address, 0), max_size=None
            ) as websocket:
                while time.monotonic() < stop:
                    await asyncio.wait_for(websocket.recv(), max(0.1, stop - time.monotonic()))
                    tally["replay frames"] += 1
        except ConnectionClosed as exc:
            tally[f"replay closed {exc.rcvd.code if exc.rcvd else 'abruptly'}"] += 1
        except InvalidStatus as exc:
            tally[f"replay refused {exc.response.status_code}"] += 1
            await asyncio.sleep(0.5)
        except (TimeoutError, OSError, WebSocketException):
            pass


async def issuers(target: Target, stop: float, tally: Counter[str]) -> None:
    key = SigningKey.generate("ES256K")
    async with httpx.AsyncClient(timeout=30) as client:
        tasks = []

        async def one(did: str) -> None:
            actor = Actor(did, key, "x")
            headers = {"content-type": "application/json", "authorization": f"Bearer {target.token(actor)}"}
            try:
                response = await client.post(
                    f"{target.url}/xrpc/{TRIGGER_NSID}", json=target.body(actor), headers=headers
                )
                tally[f"issuers {response.status_code}"] += 1
            except httpx.HTTPError as exc:
                tally[f"issuers {type(exc).__name__}"] += 1

        while time.monotonic() < stop:
            made_up = "did:plc:" + "".join(random.choices("abcdefghijklmnopqrstuvwxyz234567", k=24))
            tasks.append(asyncio.create_task(one(made_up)))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)


ABUSERS = ("flood", "idle", "watchers", "replay", "issuers")


def abuse(
    target: Target, flooder: Actor, seconds: float, which: list[str], flood_rate: float, out: Any
) -> None:
    raise_open_files()
    tally: Counter[str] = Counter()

    async def all_of_them() -> None:
        stop = time.monotonic() + seconds
        runs = {
            "flood": lambda: [flood(target, flooder, stop, flood_rate, tally)],
            "idle": lambda: [idle(target, stop, tally)],
            "watchers": lambda: [watchers(target, stop, tally)],
            "replay": lambda: [replay(target, stop, tally, f"127.0.1.{i + 1}") for i in range(20)],
            "issuers": lambda: [issuers(target, stop, tally)],
        }
        await asyncio.gather(*(coro for name in which for coro in runs[name]()))

    asyncio.run(all_of_them())
    out.put(dict(tally))


# -- the run ------------------------------------------------------------------------------------


def seed_events(database_url: str, count: int) -> None:
    """`count` status events of the first workflow run, for the replaying clients to read."""
    path = database_url.split("///", 1)[1]
    with sqlite3.connect(path, timeout=30) as db:
        (run_id,) = db.execute("SELECT min(id) FROM workflow_run").fetchone()
        now = time.strftime("%Y-%m-%d %H:%M:%S.000000")
        db.executemany(
            "INSERT INTO status_event (workflow_run_id, status, created_at) VALUES (?, 'running', ?)",
            [(run_id, now)] * count,
        )


def report(name: str, results: Results) -> None:
    good, health = results.latencies["good"], results.latencies["healthz"]
    print(
        f"  {name:<7} triggers n={len(good):<4} p50 {percentile(good, 0.5) * 1000:6.1f} ms  "
        f"p99 {percentile(good, 0.99) * 1000:6.1f} ms   /healthz n={len(health):<4} "
        f"p50 {percentile(health, 0.5) * 1000:5.1f} ms  p99 {percentile(health, 0.99) * 1000:6.1f} ms   "
        f"unexpected {len(results.unexpected)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=3.0, help="honest requests per second (open loop)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--max-jobs", type=int, default=2)
    parser.add_argument("--no-engine", action="store_true", help="no container engine: runs fail at once")
    parser.add_argument("--seed-events", type=int, default=100_000, help="status events to replay (SQLite)")
    parser.add_argument(
        "--flood-rate", type=float, default=100.0, help="the flooding repo's triggers a second"
    )
    parser.add_argument("--abusers", default=",".join(ABUSERS), help="which abusers, comma-separated")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service (repeatable)")
    args = parser.parse_args()
    random.seed(1)
    raise_open_files()

    with tempfile.TemporaryDirectory(prefix="spindle-soak-") as tmp_name:
        tmp = Path(tmp_name)
        pg = podman = None
        if args.database == "postgres":
            from tests.support.pgserver import PgServer

            pg = PgServer().create()
            database_url = pg.database()
        else:
            database_url = f"sqlite+aiosqlite:///{tmp / 'spindle.db'}"
        if args.no_engine:
            engine_env = {"SPINDLE_DOCKER_HOST": f"unix://{tmp}/no-engine.sock"}
        else:
            from tests.support.podman import PodmanEngine

            podman = PodmanEngine(tmp / "engine").start()
            engine_env = podman.env()
        plc = FakePlc()
        actors = []
        for i in range(HONEST_ACTORS + 1):
            key = SigningKey.generate("ES256K")
            actors.append(Actor(plc.register(key), key, f"soak{i}"))
        honest_actors, flooder = actors[:-1], actors[-1]
        try:
            with ServerThread(plc.app) as plc_server, TestKnot(tmp / "knot") as knot:
                for actor in actors:
                    actor.sha = knot.create_repo(actor.did, actor.repo).commit(
                        {".github/workflows/echo.yml": WORKFLOW}
                    )
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
                        **engine_env,
                        **dict(item.split("=", 1) for item in args.env),
                    },
                    port=port,
                    log=tmp / "serve.log",
                )
                for actor in actors:
                    service.cli(
                        "repo", "add", "--knot", knot.host, "--repo-did", actor.did, "--name", actor.repo
                    )
                service.start()
                target = Target(
                    url=service.url,
                    port=port,
                    did=f"did:web:{hostname.replace(':', '%3A')}",
                    knot=knot.host,
                )
                honest = Honest(target, honest_actors)
                try:
                    asyncio.run(honest.warm())
                    if args.database == "sqlite" and args.seed_events:
                        seed_events(database_url, args.seed_events)
                    known = set(plc.requests)
                    quiet = asyncio.run(honest.run(seconds=args.seconds, rate=args.rate))
                    out: Any = multiprocessing.get_context("fork").Queue()
                    abuser = multiprocessing.get_context("fork").Process(
                        target=abuse,
                        args=(target, flooder, args.seconds, args.abusers.split(","), args.flood_rate, out),
                    )
                    abuser.start()
                    abused = asyncio.run(honest.run(seconds=args.seconds, rate=args.rate))
                    tally = out.get(timeout=120)
                    abuser.join(timeout=60)
                    made_up = [did for did in plc.requests if did not in known and did != flooder.did]
                    plc_lookups = sum(plc.requests[did] for did in made_up)
                finally:
                    service.stop()
                    log_tail = service.output()
        finally:
            if pg is not None:
                pg.destroy()
            if podman is not None:
                podman.stop()

    engine = "no engine" if args.no_engine else f"Podman, SPINDLE_MAX_JOBS={args.max_jobs}"
    print(f"soak: 2 x {args.seconds:g} s, honest {args.rate:g}/s + /healthz 10/s, {args.database}, {engine}")
    report("quiet", quiet)
    report("abused", abused)
    ratio = percentile(abused.latencies["good"], 0.99) / percentile(quiet.latencies["good"], 0.99)
    print(f"  honest trigger p99, abused / quiet: {ratio:.2f}x (target: at most 2x)")
    print("  abusers got:")
    for name, count in sorted(tally.items()):
        print(f"    {name:<40} {count}")
    print(
        f"  PLC look-ups caused by {sum(tally.get(k, 0) for k in tally if k.startswith('issuers'))} "
        f"requests from made-up issuers: {plc_lookups}"
    )
    unexpected = quiet.unexpected + abused.unexpected
    for line in unexpected[:10]:
        print(f"    unexpected: {line}")
    if unexpected:
        print("service log (tail):\n" + log_tail[-3000:])
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
