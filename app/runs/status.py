"""Status transitions of a workflow run: stored as append-only events, announced after commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.database import utcnow
from app.runs.models import Status, StatusEvent, WorkflowRun
from app.streams.broker import Broker

EVENTS_TOPIC = "events"


def status_topic(run_id: int) -> tuple[str, int]:
    return ("status", run_id)


def logs_topic(run_id: int) -> tuple[str, int]:
    return ("logs", run_id)


def transition(
    session: AsyncSession,
    run: WorkflowRun,
    status: Status,
    *,
    error: str | None = None,
    exit_code: int | None = None,
) -> StatusEvent:
    """Move `run` to `status` and append its event; the caller commits, then calls `announce`."""
    now = utcnow()
    run.status = status
    if status is Status.RUNNING:
        run.started_at = now
    if status.is_finished:
        run.finished_at = now
        run.error = error
        run.exit_code = exit_code
    event = StatusEvent(
        workflow_run_id=run.id, status=status, error=error, exit_code=exit_code, created_at=now
    )
    session.add(event)
    return event


def event_payload(run: WorkflowRun, event: StatusEvent) -> dict[str, Any]:
    """What status watchers receive: the run's identity and the transition."""
    return {
        "id": event.id,
        "workflowRunId": run.id,
        "knot": run.pipeline.knot,
        "pipelineRkey": run.pipeline.rkey,
        "pipeline": run.pipeline.pipeline_uri,
        "workflow": run.name,
        "status": event.status.value,
        "error": event.error,
        "exitCode": event.exit_code,
        "createdAt": event.created_at.isoformat().replace("+00:00", "Z"),
    }


def announce(broker: Broker, run: WorkflowRun, event: StatusEvent) -> None:
    """Tell this process's watchers about a committed transition."""
    payload = event_payload(run, event)
    broker.publish(status_topic(run.id), payload)
    broker.publish(EVENTS_TOPIC, payload)
