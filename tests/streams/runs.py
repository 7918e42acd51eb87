"""Runs for stream tests, made as the trigger and the engine make them: rows first, then the broker.

`Recorder` writes through one sessionmaker and, when given the broker of the service under test,
publishes after each commit exactly as the engine does (`LogSink.flush`, `transition`+`announce`).
Without a broker it plays an engine in another process: the rows only reach the database.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.database import utcnow
from app.engine.logs import LogSink
from app.runs.models import Pipeline, Status, WorkflowRun
from app.runs.status import announce, transition
from app.streams.broker import Broker

KNOT = "127.0.0.1:5555"
REPO_DID = "did:plc:repoowner00000000000000"
REPO_NAME = "widgets"
SHA = "a" * 40
TEST_ENGINE = "test-engine"


@dataclass
class Recorder:
    sessionmaker: async_sessionmaker[AsyncSession]
    broker: Broker | None = None

    async def pipeline(
        self, rkey: str, workflows: tuple[str, ...] = ("ci",), *, knot: str = KNOT, repo_name: str = REPO_NAME
    ) -> dict[str, int]:
        """A pipeline whose runs are `pending`, as the trigger records it: workflow name → run id."""
        async with self.sessionmaker() as session:
            pipeline = Pipeline(
                knot=knot,
                rkey=rkey,
                repo_did=REPO_DID,
                repo_name=repo_name,
                sha=SHA,
                actor=REPO_DID,
                trigger_kind="manual",
                trigger={"inputs": {}},
                request_digest=hashlib.sha256(rkey.encode()).hexdigest(),
            )
            # Claimed by a test engine, heartbeat fresh: the service's own scheduler leaves them be.
            runs = [
                WorkflowRun(
                    pipeline=pipeline,
                    name=name,
                    path=f".github/workflows/{name}.yml",
                    source="on: push\n",
                    claimed_by=TEST_ENGINE,
                    heartbeat_at=utcnow(),
                )
                for name in workflows
            ]
            session.add(pipeline)
            await session.flush()
            events = [(run, transition(session, run, Status.PENDING)) for run in runs]
            await session.commit()
        if self.broker is not None:
            for run, event in events:
                announce(self.broker, run, event)
        return {run.name: run.id for run in runs}

    async def lines(self, run_id: int, lines: list[dict[str, Any]]) -> None:
        """Write log lines through the engine's LogSink: stored in one transaction, then published."""
        # Without the service's broker the batch is published to one nobody listens to.
        sink = LogSink(run_id=run_id, sessionmaker=self.sessionmaker, broker=self.broker or Broker())
        for line in lines:
            if line["kind"] == "data":
                sink.data(line["content"], stream=line["stream"], step_id=line["step_id"])
            else:
                sink.control(
                    line["content"],
                    step_id=line["step_id"],
                    step_status=line["step_status"],
                    step_command=line["step_command"],
                )
        await sink.flush()

    async def move(
        self, run_id: int, status: Status, *, error: str | None = None, exit_code: int | None = None
    ) -> int:
        """Record a transition; its event id."""
        async with self.sessionmaker() as session:
            run = await session.get(WorkflowRun, run_id)
            assert run is not None
            run.heartbeat_at = utcnow()
            event = transition(session, run, status, error=error, exit_code=exit_code)
            await session.commit()
        if self.broker is not None:
            announce(self.broker, run, event)
        return event.id


def data(content: str, *, step_id: int = 1, stream: str = "stdout") -> dict[str, Any]:
    return {"kind": "data", "content": content, "stream": stream, "step_id": step_id}


def step(step_id: int, name: str, status: str = "start", command: str | None = None) -> dict[str, Any]:
    return {
        "kind": "control",
        "content": name,
        "step_id": step_id,
        "step_status": status,
        "step_command": command,
    }
