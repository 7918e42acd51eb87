"""Per-job overhead of the container engine, next to a bare `podman run --rm <image> true`.

    .venv/bin/python bench/bench_jobs.py [--runs 10] [--image REF]

Everything is real: the Podman API service the spindle starts itself (app/engine/container/
engine.py, in a temporary data dir, unless SPINDLE_DOCKER_HOST names one), the small test image of
tests/support/podman.py (built once and kept), a SQLite database and the spindle's own Scheduler,
which claims each run and drives the container backend.

Measured in the same run, alternating one bare container and one spindle job, `--runs` times:
- floor: `podman --remote run --rm <image> true` through the same API service (the CLI's own
  start-up included, as an operator would time it);
- first output: from the moment the run is committed and the scheduler woken (what the trigger
  does last) to the first line the step prints, as a watcher of the run's log receives it;
- empty job: from the backend being asked for the job's container to the job's containers and
  network being gone, for a job of one `run: "true"` step (network, container, file commands,
  clean-up).
Target (issue 11): each at most 1.5 x floor + 100 ms. Figures are medians; the ratio is printed
because these machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.config import Settings  # noqa: E402
from app.engine.backend import Job, JobSpec, Progress  # noqa: E402
from app.engine.container import engine as container_engine  # noqa: E402
from app.engine.container import images  # noqa: E402
from app.engine.container.backend import ContainerBackend, deployment_id  # noqa: E402
from app.engine.queue import Scheduler  # noqa: E402
from app.streams.broker import logs_topic  # noqa: E402
from tests.engine.conftest import Harness  # noqa: E402
from tests.support.podman import TEST_IMAGE  # noqa: E402

WORKFLOW = """
on: workflow_dispatch
jobs:
  a:
    steps:
      - run: echo first-output
"""
EMPTY = """
on: workflow_dispatch
jobs:
  a:
    steps:
      - run: "true"
"""


class TimedBackend(ContainerBackend):
    """The container backend, timing each job from setup to the end of its clean-up."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started: dict[str, float] = {}
        self.durations: list[float] = []

    async def setup_job(self, spec: JobSpec, *, progress: Progress) -> Job:
        started = time.perf_counter()
        job = await super().setup_job(spec, progress=progress)
        self.started[job.name] = started
        return job

    async def destroy_job(self, job: Job) -> None:
        await super().destroy_job(job)
        if job.name in self.started:
            self.durations.append(time.perf_counter() - self.started.pop(job.name))


def floor_once(url: str, image: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["podman", "--remote", "--url", url, "run", "--rm", image, "true"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


async def first_output(harness: Harness, scheduler: Scheduler) -> float:
    run_id = await harness.add_run(WORKFLOW)
    with harness.broker.subscribe(logs_topic(run_id)) as watcher:
        started = time.perf_counter()
        scheduler.wake()
        while True:
            batch = await watcher.get(timeout=120)
            assert batch is not None, "no output within 120 s"
            if any(line["kind"] == "data" and line["content"] == "first-output" for line in batch):
                elapsed = time.perf_counter() - started
                break
    await harness.wait(run_id)
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image", default=None, help="default: the test suite's small Debian image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        base = Path(tmp)
        engine_settings = Settings(
            data_dir=base / "engine", docker_host=os.environ.get("SPINDLE_DOCKER_HOST")
        )
        handle = await container_engine.connect(engine_settings)
        try:
            image = args.image or await images.ensure_built(handle.docker, TEST_IMAGE, progress=print)
            print(f"engine: {handle.describe()}; image {image}")
            url = f"sqlite+aiosqlite:///{base / 'spindle.db'}"
            await asyncio.to_thread(migrate.upgrade, url)

            def make_settings(**values: Any) -> Settings:
                return Settings(docker_host=handle.url, runner_image=image, **values)

            harness = Harness(url=url, make_settings=make_settings, tmp_path=base)
            settings = harness.settings(max_jobs=1)
            backend = TimedBackend(settings=settings, instance_id="bench", deployment=deployment_id(settings))
            scheduler = Scheduler(
                settings=settings,
                sessionmaker=harness.sessionmaker,
                broker=harness.broker,
                knot=harness.knot,
                backend=backend,
                poll_interval=60,
            )
            await scheduler.start()
            # One of each first, unmeasured: caches warm (image layers, the engine's own state).
            await asyncio.to_thread(floor_once, handle.url, image)
            await first_output(harness, scheduler)
            floors, outputs, empties = [], [], []
            for _ in range(args.runs):
                floors.append(await asyncio.to_thread(floor_once, handle.url, image))
                outputs.append(await first_output(harness, scheduler))
                before = len(backend.durations)
                run_id = await harness.add_run(EMPTY)
                scheduler.wake()
                await harness.wait(run_id)
                empties.extend(backend.durations[before:])
            await scheduler.stop()
            await harness.db.dispose()
        finally:
            await handle.close()
    floor = statistics.median(floors)
    target = 1.5 * floor + 0.1
    print(f"\n{args.runs} rounds, medians (min-max):")
    rows = (("floor: podman run --rm true", floors), ("first output", outputs), ("empty job", empties))
    for name, values in rows:
        median = statistics.median(values)
        print(
            f"  {name:30s} {median * 1000:7.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"
            f"  {median / floor:5.2f} x floor"
        )
    print(f"  target: at most 1.5 x floor + 100 ms = {target * 1000:.0f} ms")
    for name, values in (("first output", outputs), ("empty job", empties)):
        verdict = "met" if statistics.median(values) <= target else "NOT met"
        print(f"  {name}: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
