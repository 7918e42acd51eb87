"""Trigger throughput and latency, next to a bare FastAPI endpoint on the same uvicorn settings.

    .venv/bin/python bench/bench_trigger.py [--rounds 8] [--seconds 1.5] [--concurrency 16] [--cold 20]
        [--database sqlite|postgres] [--rkeys tid|random]

Everything is real: the spindle (`app.main.create_app`, SQLite in WAL mode, or
PostgreSQL with --database postgres) and a bare FastAPI app
each run under uvicorn in a process of their own with identical settings; the git knot of
tests/support/knot.py runs in a third process and a local PLC in this one; tokens are real ES256K
JWTs of four accounts (the repo's owner and three collaborators), minted before the clock starts,
each with its own jti. The load comes from bench/load_client.py, a minimal HTTP/1.1 keep-alive
client in a process of its own, so that neither server waits for the client. About 75 s in all.

1. Warm path: triggers per second with the DID documents, the registration and the workflow file
   (one per trigger) cached; each trigger has a new record key (a TID, as clients mint them;
   --rkeys random for random ones), so each commits a pipeline, a workflow run and its first
   event before it is answered. The bare endpoint takes the same JSON
   body and headers and answers JSON. Bare and trigger are measured in alternating slices (the
   machine's other load drifts; alternating exposes both to it alike): each round measures both,
   the first one in turn, and the figure is the median of the rounds' ratios. Target: >= 50% of
   the bare rate.
2. Cold path: one trigger at a time, each at a new commit of 10 workflow files, the knot answering
   after 50 ms (the DID document and the registration are cached: the knot round trips are what
   is measured). Target: below 2 x 50 + 30 = 130 ms (the tree, then the ten blobs at once).

Both run with the engine paused (the runs stay pending), so that they measure the trigger path;
a last figure repeats the warm path on a spindle whose engine claims and finishes every run (the
workflows' job is `if: false`, so no process is spawned) in the same process and SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pickle
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.database import create_engine, create_sessionmaker  # noqa: E402
from app.repos import service as repos_service  # noqa: E402
from app.runs.schemas import TRIGGER_NSID  # noqa: E402
from app.streams.service import make_tid  # noqa: E402
from tests.support.keys import SigningKey, mint  # noqa: E402
from tests.support.knot import BLOB, TREE, GitRepo  # noqa: E402
from tests.support.pgserver import PgServer  # noqa: E402
from tests.support.plc import FakePlc  # noqa: E402
from tests.support.servers import ServerThread, free_port  # noqa: E402

UVICORN = "uvicorn.run({app}, host='127.0.0.1', port={port}, log_level='warning', access_log=False)"
SPINDLE_APP = "import uvicorn\nfrom app.main import create_app\n" + UVICORN.format(
    app="create_app()", port="{port}"
)
# The engine paused (its queue not started, wake() a no-op): the runs stay pending and the figures
# are those of the trigger path. Running, it claims and finishes every run in the same process and
# on the same SQLite file, which the last figure shows.
PAUSED_ENGINE = (
    "from app.engine import queue\n"
    "async def _idle(self): pass\n"
    "queue.Scheduler.start = _idle\n"
    "queue.Scheduler.wake = lambda self: None\n"
)
BARE_APP = (
    "import uvicorn\nfrom typing import Any\nfrom fastapi import FastAPI\n"
    "app = FastAPI()\n"
    "@app.post('/xrpc/bare')\n"
    "async def bare(body: dict[str, Any]) -> dict[str, Any]:\n"
    "    return {{'submitted': True, 'knot': body['knot'], 'pipelineRkey': body['pipelineRkey']}}\n"
    + UVICORN.format(app="app", port="{port}")
)

# The knot in a process of its own, so that its answers take the 50 ms they are told to and not
# also the time this process spends minting tokens and running the load client.
KNOT_APP = """\
import asyncio, contextlib, json, sys
from pathlib import Path
import uvicorn
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect
from tests.support.knot import GitRepo, TestKnot
spec = json.loads(sys.argv[1])
knot = TestKnot(Path(spec["root"]))
for did, name in spec["repos"]:
    knot.repos[(did, name)] = GitRepo(Path(spec["root"]) / did / name, did, name)
async def latency(request):
    knot.latency = float(request.query_params["seconds"])
    return JSONResponse({{}})
async def events(websocket):
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()
knot.add_route("/bench/latency", latency)
knot.add_websocket_route("/events", events)
uvicorn.run(knot.app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""

WORKFLOW = """\
on: [push, workflow_dispatch]
jobs:
  build:
    if: false
    runs-on: ubuntu-latest
    steps:
      - run: echo {n}
"""


def start_server(code: str, port: int, env: dict[str, str], *argv: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code.format(port=port), *argv], cwd=ROOT, env={**os.environ, **env}
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"server on port {port} exited with {proc.returncode}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server on port {port} did not start")


Request = tuple[dict[str, Any], dict[str, str]]
LOAD_CLIENT = Path(__file__).resolve().parent / "load_client.py"
ACCOUNTS = 4  # the replay guard holds at most 10,000 live tokens per issuer


async def load(client: httpx.AsyncClient, url: str, requests: list[Request], concurrency: int) -> None:
    """Send `requests` with httpx (warm-ups): every answer must be 200."""
    queue = iter(requests)

    async def worker() -> None:
        for body, headers in queue:
            response = await client.post(url, json=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def raw_request(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {len(data)}", "", ""]
    return "\r\n".join(lines).encode() + data


def rate(port: int, path: str, requests: list[Request], seconds: float, concurrency: int) -> float:
    """Requests per second that bench/load_client.py (its own process) gets answered with 200."""
    job = {
        "port": port,
        "requests": [raw_request(port, path, body, headers) for body, headers in requests],
        "seconds": seconds,
        "concurrency": concurrency,
    }
    out = subprocess.run(
        [sys.executable, str(LOAD_CLIENT)], input=pickle.dumps(job), capture_output=True, check=True
    )
    result = json.loads(out.stdout)
    if "error" in result:
        raise RuntimeError(f"{path}: {result['error']}")
    return float(result["done"]) / float(result["seconds"])


async def direct_set_latency(knot_url: str, seconds: float) -> None:
    async with httpx.AsyncClient() as client:
        (await client.get(f"{knot_url}/bench/latency", params={"seconds": seconds})).raise_for_status()


class Bench:
    """The PLC, the knot and the repos, shared by every spindle process this run starts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-trigger-"))
        # PostgreSQL: a throwaway server (scripts/postgres; fsync off, as in the tests).
        self.pg = PgServer().create() if args.database == "postgres" else None
        self.plc = FakePlc()
        self.plc_server = ServerThread(self.plc.app).start()
        self.keys = [SigningKey.generate("ES256K") for _ in range(ACCOUNTS)]
        self.dids = [self.plc.register(key) for key in self.keys]
        self.actor = self.dids[0]  # owns both repos; the others are collaborators
        self._next = itertools.cycle(range(ACCOUNTS))
        self._micros = 0
        self._clock_id = secrets.randbelow(1024)
        root = self.tmp / "knot"
        warm = GitRepo.init(root / self.actor / "warm", self.actor, "warm")
        self.warm_sha = warm.commit({".github/workflows/ci.yml": WORKFLOW.format(n=0)})
        cold = GitRepo.init(root / self.actor / "cold", self.actor, "cold")
        self.cold_shas = [
            cold.commit({f".github/workflows/w{i}.yml": WORKFLOW.format(n=f"{c}-{i}") for i in range(10)})
            for c in range(args.cold + 1)
        ]
        knot_port = free_port()
        self.knot_host = f"127.0.0.1:{knot_port}"
        self.knot_url = f"http://{self.knot_host}"
        self.servers: list[subprocess.Popen[bytes]] = []
        spec = json.dumps({"root": str(root), "repos": [[self.actor, "warm"], [self.actor, "cold"]]})
        self.servers.append(start_server(KNOT_APP, knot_port, {}, spec))

    def close(self) -> None:
        for proc in self.servers:
            proc.terminate()
            proc.wait(timeout=15)
        self.plc_server.stop()
        if self.pg is not None:
            self.pg.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def spindle(self, name: str, *, paused: bool) -> tuple[int, str]:
        """Start a spindle on a fresh database; (port, its DID)."""
        port = free_port()
        (self.tmp / name).mkdir()
        if self.pg is not None:
            database_url = await asyncio.to_thread(self.pg.database)  # new, migrated
        else:
            database_url = f"sqlite+aiosqlite:///{self.tmp / name / 'spindle.db'}"
            await migrate.upgrade_async(database_url)
        engine = create_engine(database_url)
        async with create_sessionmaker(engine)() as session:
            for repo in ("warm", "cold"):
                await repos_service.add(
                    session=session,
                    knot=self.knot_host,
                    did=self.actor,
                    name=repo,
                    owner_did=self.actor,
                    collaborators=self.dids[1:],
                )
        await engine.dispose()
        env = {
            "SPINDLE_HOSTNAME": f"127.0.0.1:{port}",
            "SPINDLE_OWNER": self.actor,
            "SPINDLE_DEV": "true",
            "SPINDLE_PLC_URL": self.plc_server.url,
            "SPINDLE_DATABASE_URL": database_url,
            "SPINDLE_DATA_DIR": str(self.tmp / name / "data"),
            "SPINDLE_LISTEN": f"127.0.0.1:{port}",
            "SPINDLE_MAX_JOBS": "1",
            # Throughput of the trigger itself: one actor and repo far past their quotas (docs/limits.md).
            "SPINDLE_ACTOR_RUNS_PER_MINUTE": "0",
            "SPINDLE_REPO_RUNS_PER_MINUTE": "0",
            "SPINDLE_MAX_QUEUED_RUNS_PER_REPO": "0",
        }
        self.servers.append(start_server((PAUSED_ENGINE if paused else "") + SPINDLE_APP, port, env))
        return port, f"did:web:127.0.0.1%3A{port}"

    def rkey(self) -> str:
        """A new record key: a TID, as atproto clients and knots mint them (time-ordered), or with
        --rkeys random a random one (each insert lands anywhere in the (knot, rkey) index)."""
        if self.args.rkeys == "random":
            return "b" + secrets.token_hex(8)
        self._micros = max(self._micros + 1, time.time_ns() // 1000)
        return make_tid(self._micros, self._clock_id)

    def body(self, repo: str, sha: str, actor: str | None = None) -> dict[str, Any]:
        return {
            "knot": self.knot_host,
            "pipelineRkey": self.rkey(),
            "actor": actor or self.actor,
            "repoDid": self.actor,
            "repoName": repo,
            "ref": sha,
        }

    def request(self, service_did: str, repo: str, sha: str) -> Request:
        """A trigger by the next account, with a fresh token."""
        i = next(self._next)
        token = mint(self.keys[i], iss=self.dids[i], aud=service_did, lxm=TRIGGER_NSID)
        return self.body(repo, sha, self.dids[i]), {"authorization": f"Bearer {token}"}

    def requests(self, service_did: str, count: int) -> list[Request]:
        return [self.request(service_did, "warm", self.warm_sha) for _ in range(count)]

    async def warm_up(self, client: httpx.AsyncClient, port: int, service_did: str) -> None:
        """Each account's DID document, the registration and the warm workflow file get cached."""
        url = f"http://127.0.0.1:{port}/xrpc/{TRIGGER_NSID}"
        await load(client, url, self.requests(service_did, 25 * ACCOUNTS), 4)

    async def cold_latencies(self, client: httpx.AsyncClient, port: int, service_did: str) -> list[float]:
        # The knot (a test double) computes its answers first, so that its own git processes are not
        # what is measured; then it answers every request after 50 ms.
        async with httpx.AsyncClient(base_url=self.knot_url) as direct:
            for sha in self.cold_shas:
                # Both repos belong to one DID, so the knot cannot tell them apart by DID and the
                # spindle asks for `<did>/<name>` (docs/trigger.md, "Knot access"); warm that form.
                params = {"repo": f"{self.actor}/cold", "ref": sha}
                await direct.get(f"/xrpc/{TREE}", params={**params, "path": ".github/workflows"})
                for i in range(10):
                    await direct.get(
                        f"/xrpc/{BLOB}", params={**params, "path": f".github/workflows/w{i}.yml"}
                    )
        url = f"http://127.0.0.1:{port}/xrpc/{TRIGGER_NSID}"
        await load(client, url, [self.request(service_did, "cold", self.cold_shas[0])], 1)
        await direct_set_latency(self.knot_url, 0.05)
        latencies = []
        try:
            for sha in self.cold_shas[1:]:
                body, headers = self.request(service_did, "cold", sha)
                started = time.perf_counter()
                response = await client.post(url, json=body, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200 or len(response.json()["workflows"]) != 10:
                    raise RuntimeError(f"cold trigger: {response.status_code} {response.text}")
        finally:
            await direct_set_latency(self.knot_url, 0.0)
        return sorted(latencies)


async def run(args: argparse.Namespace) -> None:
    bench = Bench(args)
    trigger_path = f"/xrpc/{TRIGGER_NSID}"
    seconds, concurrency = args.seconds, args.concurrency
    bare_rates: list[float] = []
    warm_rates: list[float] = []
    try:
        bare_port = free_port()
        bench.servers.append(start_server(BARE_APP, bare_port, {}))
        port, did = await bench.spindle("paused", paused=True)
        async with httpx.AsyncClient(timeout=30) as client:
            await bench.warm_up(client, port, did)
            headers = bench.request(did, "warm", bench.warm_sha)[1]
            bare = [(bench.body("warm", bench.warm_sha), headers) for _ in range(int(seconds * 8000))]
            rate(bare_port, "/xrpc/bare", bare[:2000], seconds / 4, concurrency)  # its warm-up
            for round_ in range(args.rounds):
                triggers = bench.requests(did, args.triggers)
                # Each round measures both, in turn first: a ratio of neighbouring slices.
                slices = [
                    (bare_rates, bare_port, "/xrpc/bare", bare),
                    (warm_rates, port, trigger_path, triggers),
                ]
                for rates, slice_port, path, requests in slices[:: 1 if round_ % 2 == 0 else -1]:
                    rates.append(rate(slice_port, path, requests, seconds, concurrency))
            latencies = await bench.cold_latencies(client, port, did)

            port, did = await bench.spindle("running", paused=False)
            await bench.warm_up(client, port, did)
            running = rate(port, trigger_path, bench.requests(did, args.triggers), seconds, concurrency)
    finally:
        bench.close()

    bare_rate, warm_rate = statistics.median(bare_rates), statistics.median(warm_rates)
    ratios = sorted(warm / bare for warm, bare in zip(warm_rates, bare_rates, strict=True))
    ratio = statistics.median(ratios)
    p50, p90 = statistics.median(latencies), latencies[int(len(latencies) * 0.9) - 1]
    print(
        f"uvicorn (uvloop, httptools), one process per app, {concurrency} keep-alive connections from a "
        f"load client process, {os.cpu_count()} CPUs; {args.rounds} alternating rounds of {seconds:g} s; "
        f"{args.rkeys} record keys; {args.database}"
    )
    print(f"bare FastAPI JSON    {' '.join(f'{r:6.0f}' for r in bare_rates)} req/s, median {bare_rate:6.0f}")
    print(f"trigger warm path    {' '.join(f'{r:6.0f}' for r in warm_rates)} req/s, median {warm_rate:6.0f}")
    verdict = "met" if ratio >= 0.5 else "NOT met"
    print(
        f"trigger / bare       {ratio:.0%} of the bare rate, median of the rounds' ratios "
        f"(range {ratios[0]:.0%}-{ratios[-1]:.0%}; target >= 50%: {verdict})"
    )
    print(f"trigger warm path with the engine claiming and finishing every run: {running:.0f} req/s")
    print(
        f"cold path, knot answering after 50 ms, 10 workflow files, {len(latencies)} triggers one at a "
        f"time: p50 {p50:.0f} ms, p90 {p90:.0f} ms, max {latencies[-1]:.0f} ms "
        f"(target < 130 ms: {'met' if p50 < 130 else 'NOT met'} at p50)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8, help="alternating bare/trigger rounds")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each throughput slice")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent connections")
    parser.add_argument("--triggers", type=int, default=6000, help="tokens minted per trigger slice")
    parser.add_argument("--cold", type=int, default=20, help="number of cold-path triggers")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--rkeys",
        choices=("tid", "random"),
        default="tid",
        help="record keys: TIDs (as clients mint them) or random",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
