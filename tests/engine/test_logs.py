"""The log sink: bounded volume and line length, stored before published."""

from __future__ import annotations

from app.engine.logs import TRUNCATED_SUFFIX, LogSink
from app.runs.models import Status
from app.streams.broker import logs_topic
from tests.engine.conftest import Harness


async def test_a_run_past_its_line_cap_keeps_one_truncation_notice_and_its_step_boundaries(
    harness: Harness,
) -> None:
    run_id = await harness.add_run("on: push\njobs: {a: {steps: [{run: echo}]}}\n", status=Status.RUNNING)
    sink = LogSink(run_id=run_id, sessionmaker=harness.sessionmaker, broker=harness.broker, max_lines=5)
    await sink.start()
    sink.control("Build", step_id=0, step_status="start", step_command="make")
    for i in range(20):
        sink.data(f"line {i}", stream="stdout", step_id=0)
    sink.control("Build", step_id=0, step_status="end", step_command="make")
    await sink.close()
    lines = await harness.lines(run_id)
    # Every stored line counts, the step's start line too: four data lines fit under five.
    assert [line.content for line in lines if line.kind == "data"] == [f"line {i}" for i in range(4)]
    controls = [(line.step_status, line.content) for line in lines if line.kind == "control"]
    assert controls == [
        ("start", "Build"),
        (None, "log truncated: this run wrote more than 5 lines or 50 MB; further output is not kept"),
        ("end", "Build"),
    ]
    assert (sink.truncated, sink.dropped) == (True, 16)


async def test_a_run_past_its_byte_cap_is_truncated_too(harness: Harness) -> None:
    run_id = await harness.add_run("on: push\njobs: {a: {steps: [{run: echo}]}}\n", status=Status.RUNNING)
    sink = LogSink(run_id=run_id, sessionmaker=harness.sessionmaker, broker=harness.broker, max_bytes=2500)
    await sink.start()
    for _ in range(5):
        sink.data("x" * 1000, stream="stdout", step_id=0)
    await sink.close()
    kinds = [line.kind for line in await harness.lines(run_id)]
    assert kinds == ["data", "data", "control"]


async def test_step_boundaries_and_their_commands_count_against_the_byte_cap(harness: Harness) -> None:
    run_id = await harness.add_run("on: push\njobs: {a: {steps: [{run: echo}]}}\n", status=Status.RUNNING)
    cap = 64 * 1024
    sink = LogSink(run_id=run_id, sessionmaker=harness.sessionmaker, broker=harness.broker, max_bytes=cap)
    await sink.start()
    # The attack: thousands of steps with long commands and no output at all.
    for step in range(5000):
        sink.control("s", step_id=step, step_status="start", step_command="x" * 10_000)
        sink.control("s", step_id=step, step_status="end", step_command="x" * 10_000)
    await sink.close()
    lines = await harness.lines(run_id)
    stored = sum(len(line.content) + len(line.step_command or "") for line in lines)
    assert sink.truncated
    assert stored <= cap + 1024 * 1024
    assert all(line.step_command is None for line in lines[-10:])


async def test_an_overlong_line_is_cut_and_marked(harness: Harness) -> None:
    run_id = await harness.add_run("on: push\njobs: {a: {steps: [{run: echo}]}}\n", status=Status.RUNNING)
    sink = LogSink(run_id=run_id, sessionmaker=harness.sessionmaker, broker=harness.broker, max_line_chars=10)
    with harness.broker.subscribe(logs_topic(run_id)) as watcher:
        await sink.start()
        sink.data("0123456789abcdef", stream="stderr", step_id=3)
        await sink.close()
        (published,) = watcher.drain()
    (row,) = await harness.lines(run_id)
    assert row.content == "0123456789" + TRUNCATED_SUFFIX
    assert published == [
        {
            "id": row.id,
            "kind": "data",
            "content": row.content,
            "time": published[0]["time"],
            "step_id": 3,
            "stream": "stderr",
            "step_status": None,
            "step_command": None,
            "step_kind": "system",
        }
    ]


async def test_a_step_printing_a_huge_line_without_newline_does_not_break_the_run(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: head -c 300000 /dev/zero | tr '\\0' 'y'; echo; echo after
        """
    )
    assert run.status is Status.SUCCESS
    output = await harness.output(run.id)
    assert "after" in output
    long_lines = [line for line in output if line.startswith("yyyy")]
    assert long_lines and all(line.endswith(TRUNCATED_SUFFIX) for line in long_lines)


async def test_every_line_says_whether_its_step_is_the_workflows_or_the_spindles(harness: Harness) -> None:
    run_id = await harness.add_run("on: push\njobs: {a: {steps: [{run: echo}]}}\n", status=Status.RUNNING)
    sink = LogSink(run_id=run_id, sessionmaker=harness.sessionmaker, broker=harness.broker, max_lines=5)
    await sink.start()
    sink.notice("job a")
    sink.control("Build", step_id=0, step_status="start", step_command="make")
    sink.data("compiling", stream="stdout", step_id=0)
    sink.notice("GITHUB_ENV: ignored", step_id=0)
    sink.control("Build", step_id=0, step_status="end", step_command="make")
    sink.data("a line past the cap", stream="stdout", step_id=0)
    await sink.close()
    kinds = [(line.kind, line.content, line.step_kind) for line in await harness.lines(run_id)]
    assert kinds == [
        ("data", "spindle: job a", "system"),
        ("control", "Build", "user"),
        ("data", "compiling", "user"),
        ("data", "spindle: GITHUB_ENV: ignored", "user"),  # said about the step: shown inside it
        ("control", "Build", "user"),
        ("control", kinds[5][1], "system"),  # the truncation note is the spindle's
    ]
    assert kinds[5][1].startswith("log truncated")
