"""Many watchers of one run: delivery lag of live log lines, the cost to the run, and memory.

    .venv/bin/python bench/bench_watchers.py [--watchers 500] [--rate 20] [--seconds 15] [--triggers 5]

1. Watchers. The spindle (`app.main.create_app`, SQLite in WAL mode, its scheduler running) runs
   under uvicorn in its own process. N WebSocket clients (the `websockets` library, one process)
   watch `/logs/...` of one running workflow run. A producer inside the spindle writes log lines
   at a steady rate through the engine's own code path (`app.engine.logs.LogSink`: rows in
   batches every 50 ms, committed, then published to the broker), each line carrying the wall
   time it was written. Printed: delivery lag (line written → frame received) p50/p99/max, how
   late the producer ran against its schedule (what watchers cost the run), the time a publish
   to N subscribers takes, and the spindle's RSS before, during and after. Target: p99 < 200 ms.
2. Trigger to first log line. A local PLC and a local git knot (tests/support), a registered
   repo whose workflow echoes one line, a real ES256K service-auth token: the time from sending
   the trigger to receiving the first data line on the returned logsUrl, with the real engine
   running the step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.database import create_engine, create_sessionmaker  # noqa: E402
from app.repos import service as repos_service  # noqa: E402
from app.runs.models import Status  # noqa: E402
from app.runs.schemas import TRIGGER_NSID  # noqa: E402
from tests.streams.runs import KNOT, Recorder  # noqa: E402
from tests.support.keys import SigningKey, mint  # noqa: E402
from tests.support.knot import TestKnot  # noqa: E402
from tests.support.plc import FakePlc  # noqa: E402
from tests.support.servers import ServerThread, free_port  # noqa: E402

WORKFLOW = """\
on: [push, workflow_dispatch]
jobs:
  hello:
    runs-on: ubuntu-latest
    steps:
      - run: echo first-line
"""


# --- the spindle process -----------------------------------------------------------------


def serve(port: int) -> None:
    """The spindle with two bench-only routes: start a producer, and read what it measured."""
    import uvicorn

    from app.engine.logs import LogSink
    from app.main import create_app
    from app.runs.models import WorkflowRun
    from app.runs.status import announce, transition
    from app.streams.broker import Broker

    publishes: list[tuple[int, float]] = []  # (subscribers, seconds) per log batch published
    lateness: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    original_publish = Broker.publish

    def timed_publish(self: Broker, topic: Any, item: Any) -> None:
        started = time.perf_counter()
        original_publish(self, topic, item)
        if isinstance(topic, tuple) and topic[0] == "logs":
            publishes.append((self.subscriber_count(topic), time.perf_counter() - started))

    Broker.publish = timed_publish  # type: ignore[method-assign]
    router = APIRouter()

    @router.post("/bench/produce")
    async def produce(request: Request, run_id: int, lines: int, rate: float) -> dict[str, str]:
        ctx = request.app.state.ctx

        async def run() -> None:
            sink = LogSink(run_id=run_id, sessionmaker=ctx.sessionmaker, broker=ctx.broker)
            await sink.start()
            loop = asyncio.get_running_loop()
            start = loop.time()
            for seq in range(lines):
                due = start + seq / rate
                await asyncio.sleep(max(due - loop.time(), 0))
                lateness.append(loop.time() - due)
                sink.data(f"{time.time():.6f} {seq}", stream="stdout", step_id=1)
            await sink.close()
            async with ctx.sessionmaker() as session:
                row = await session.get(WorkflowRun, run_id)
                event = transition(session, row, Status.SUCCESS)
                await session.commit()
            announce(ctx.broker, row, event)

        task = asyncio.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return {"started": "yes"}

    @router.get("/bench/stats")
    async def stats(request: Request, run_id: int) -> dict[str, Any]:
        ctx = request.app.state.ctx
        feeds = ctx.extras.get("stream_feeds")
        return {
            "publishes": publishes,
            "lateness": lateness,
            "subscribers": ctx.broker.subscriber_count(("logs", run_id)),
            "feeds": feeds.active() if feeds else 0,
        }

    app = create_app()
    app.include_router(router)
    # As `spindle serve` runs it (app/cli.py), plus access_log off as a production proxy setup would.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
        ws_max_size=1 << 20,
        ws_per_message_deflate=os.environ.get("BENCH_WS_DEFLATE", "1") == "1",
    )


# --- the bench -------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_spindle(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], cwd=ROOT, env={**os.environ, **env}
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"spindle exited with {proc.returncode}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("spindle did not start")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


async def watch(url: str, lags: list[float], counts: list[int], connected: asyncio.Event) -> None:
    async with connect(url, max_queue=None, open_timeout=60) as ws:
        connected.set()
        received = 0
        async for message in ws:
            now = time.time()
            written = float(json.loads(message)["content"].split()[0])
            lags.append(now - written)
            received += 1
        counts.append(received)


async def watchers_bench(args: argparse.Namespace, tmp: Path) -> None:
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{tmp / 'watchers.db'}"
    await migrate.upgrade_async(database_url)
    engine = create_engine(database_url)
    recorder = Recorder(create_sessionmaker(engine))
    run_id = (await recorder.pipeline("3benchwatch"))["ci"]
    await recorder.move(run_id, Status.RUNNING)
    await engine.dispose()

    env = {
        "SPINDLE_HOSTNAME": f"127.0.0.1:{port}",
        "SPINDLE_OWNER": "did:plc:benchowner00000000000000",
        "SPINDLE_DEV": "true",
        "SPINDLE_DATABASE_URL": database_url,
        "SPINDLE_DATA_DIR": str(tmp / "watchers-data"),
        "SPINDLE_LISTEN": f"127.0.0.1:{port}",
        "SPINDLE_LOG_LEVEL": "warning",
        # Capacity of the streams: every watcher comes from this one address (docs/limits.md).
        "SPINDLE_MAX_WATCHERS": "100000",
        "SPINDLE_MAX_WATCHERS_PER_ADDRESS": "100000",
    }
    spindle = start_spindle(port, env)
    lines = int(args.rate * args.seconds)
    try:
        rss_idle = rss_mb(spindle.pid)
        url = f"ws://127.0.0.1:{port}/logs/{KNOT}/3benchwatch/ci"
        lags: list[float] = []
        counts: list[int] = []
        events = [asyncio.Event() for _ in range(args.watchers)]
        connect_started = time.perf_counter()
        tasks = []
        for i, event in enumerate(events):
            tasks.append(asyncio.create_task(watch(url, lags, counts, event)))
            if i % 50 == 49:
                await asyncio.gather(*(e.wait() for e in events[: i + 1]))
        await asyncio.gather(*(e.wait() for e in events))
        connect_time = time.perf_counter() - connect_started
        rss_connected = rss_mb(spindle.pid)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            cpu_before, client_before = cpu_seconds(spindle.pid), time.process_time()
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            response = await client.post(
                "/bench/produce", params={"run_id": run_id, "lines": lines, "rate": args.rate}
            )
            response.raise_for_status()
            async with asyncio.timeout(args.seconds + 60):
                await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - started
            cpu_used = cpu_seconds(spindle.pid) - cpu_before
            client_used = time.process_time() - client_before
            load_after = os.getloadavg()[0]
            rss_during = rss_mb(spindle.pid)
        await asyncio.sleep(1)
        rss_after = rss_mb(spindle.pid)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            stats = (await client.get("/bench/stats", params={"run_id": run_id})).json()
    finally:
        spindle.terminate()
        spindle.wait(timeout=30)

    ms = [lag * 1000 for lag in lags]
    complete = sum(1 for c in counts if c == lines)
    late = [x * 1000 for x in stats["lateness"]]
    batches = [(n, s * 1e6) for n, s in stats["publishes"] if n >= args.watchers]
    p99 = percentile(ms, 0.99)
    print(f"{args.watchers} WebSocket watchers of one run, {lines} lines at {args.rate:g}/s", end="")
    print(f", {os.cpu_count()} CPUs shared with whatever else runs")
    print(
        f"  load average {load_before:.1f} → {load_after:.1f} while producing; the watcher clients used"
        f" {client_used:.1f} CPU-s ({client_used / elapsed:.0%} of a core) in this process"
    )
    print(f"  connected in {connect_time:.1f} s; all lines delivered to {complete}/{args.watchers} watchers")
    print(
        f"  frames delivered  {len(ms)} in {elapsed:.1f} s; the spindle used {cpu_used:.1f} CPU-s"
        f" ({cpu_used / elapsed:.0%} of a core, {cpu_used / len(ms) * 1e6:.0f} us per frame all included)"
    )
    print(
        f"  delivery lag      p50 {statistics.median(ms):.1f} ms  p99 {p99:.1f} ms  max {max(ms):.1f} ms"
        f"  (target p99 < 200 ms: {'met' if p99 < 200 else 'NOT met'}; includes LogSink's 50 ms batching)"
    )
    print(
        f"  producer lateness p50 {statistics.median(late):.2f} ms  p99 {percentile(late, 0.99):.2f} ms"
        f"  max {max(late):.2f} ms  (how late the run wrote its lines against its schedule)"
    )
    if batches:
        cost = [us for _, us in batches]
        print(
            f"  broker.publish to {batches[0][0]} subscribers: mean {statistics.mean(cost):.0f} us"
            f"  max {max(cost):.0f} us  ({len(batches)} batches)"
        )
    print(
        f"  spindle RSS       idle {rss_idle:.0f} MB, watchers connected {rss_connected:.0f} MB,"
        f" after the run {rss_during:.0f} MB, watchers gone {rss_after:.0f} MB"
        f" (left behind: {stats['subscribers']} subscriptions, {stats['feeds']} database feeds)"
    )


async def trigger_bench(args: argparse.Namespace, tmp: Path) -> None:
    plc = FakePlc()
    plc_server = ServerThread(plc.app).start()
    knot = TestKnot(tmp / "knot").start()
    key = SigningKey.generate("ES256K")
    actor = plc.register(key)
    port = free_port()
    hostname = f"127.0.0.1:{port}"
    service_did = "did:web:" + hostname.replace(":", "%3A")
    database_url = f"sqlite+aiosqlite:///{tmp / 'trigger.db'}"
    await migrate.upgrade_async(database_url)
    repo = knot.create_repo(actor, "hello")
    sha = repo.commit({".github/workflows/ci.yml": WORKFLOW})
    engine = create_engine(database_url)
    async with create_sessionmaker(engine)() as session:
        await repos_service.add(
            session=session, knot=knot.host, did=actor, name="hello", owner_did=actor, collaborators=()
        )
    await engine.dispose()
    env = {
        "SPINDLE_HOSTNAME": hostname,
        "SPINDLE_OWNER": actor,
        "SPINDLE_DEV": "true",
        "SPINDLE_PLC_URL": plc_server.url,
        "SPINDLE_DATABASE_URL": database_url,
        "SPINDLE_DATA_DIR": str(tmp / "trigger-data"),
        "SPINDLE_LISTEN": hostname,
        "SPINDLE_LOG_LEVEL": "warning",
        "SPINDLE_MAX_WATCHERS": "100000",
        "SPINDLE_MAX_WATCHERS_PER_ADDRESS": "100000",
        "SPINDLE_ACTOR_RUNS_PER_MINUTE": "0",
        "SPINDLE_REPO_RUNS_PER_MINUTE": "0",
        "SPINDLE_MAX_QUEUED_RUNS_PER_REPO": "0",
    }
    spindle = start_spindle(port, env)
    latencies: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://{hostname}", timeout=60) as client:
            for attempt in range(args.triggers + 1):
                body = {
                    "knot": knot.host,
                    "pipelineRkey": "3bt" + secrets.token_hex(6),
                    "actor": actor,
                    "repoDid": actor,
                    "repoName": "hello",
                    "ref": sha,
                }
                token = mint(key, iss=actor, aud=service_did, lxm=TRIGGER_NSID)
                started = time.perf_counter()
                response = await client.post(
                    f"/xrpc/{TRIGGER_NSID}", json=body, headers={"authorization": f"Bearer {token}"}
                )
                if response.status_code != 200:
                    raise RuntimeError(f"trigger: {response.status_code} {response.text}")
                logs_url = response.json()["workflows"][0]["logsUrl"]
                async with connect(logs_url) as ws, asyncio.timeout(60):
                    async for message in ws:
                        line = json.loads(message)
                        if line["kind"] == "data":
                            if attempt:  # the first trigger warms the DID document and the engine
                                latencies.append((time.perf_counter() - started) * 1000)
                            break
    finally:
        spindle.terminate()
        spindle.wait(timeout=30)
        knot.stop()
        plc_server.stop()
    print(
        f"trigger → first log line ({len(latencies)} triggers, real engine, workflow `echo`):"
        f"  p50 {statistics.median(latencies):.0f} ms  max {max(latencies):.0f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-watchers-"))
    await watchers_bench(args, tmp)
    if args.triggers:
        await trigger_bench(args, tmp)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--watchers", type=int, default=500, help="concurrent WebSocket watchers")
    parser.add_argument("--rate", type=float, default=20.0, help="log lines per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the producer writes")
    parser.add_argument("--triggers", type=int, default=5, help="trigger→first line samples (0: skip)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
