"""Status transitions of a workflow run: stored as append-only events, announced after commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.database import utcnow
from app.runs.models import Status, StatusEvent, WorkflowRun, pipeline_uri
from app.runs.writer import StoredPipeline
from app.streams.broker import EVENTS_TOPIC, Broker, status_topic


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
    return payload(
        event_id=event.id,
        run_id=run.id,
        knot=run.pipeline.knot,
        rkey=run.pipeline.rkey,
        workflow=run.name,
        status=event.status,
        error=event.error,
        exit_code=event.exit_code,
        created_at=event.created_at,
    )


def payload(
    *,
    event_id: int,
    run_id: int,
    knot: str,
    rkey: str,
    workflow: str,
    status: Status,
    error: str | None,
    exit_code: int | None,
    created_at: datetime,
) -> dict[str, Any]:
    """The watchers' payload from plain values (for writers that hold no ORM objects)."""
    return {
        "id": event_id,
        "workflowRunId": run_id,
        "knot": knot,
        "pipelineRkey": rkey,
        "pipeline": pipeline_uri(knot, rkey),
        "workflow": workflow,
        "status": status.value,
        "error": error,
        "exitCode": exit_code,
        "createdAt": created_at.isoformat().replace("+00:00", "Z"),
    }


def announce(broker: Broker, run: WorkflowRun, event: StatusEvent) -> None:
    """Tell this process's watchers about a committed transition."""
    publish(broker, run.id, event_payload(run, event))


def publish(broker: Broker, run_id: int, item: dict[str, Any]) -> None:
    """Hand a committed transition's payload to the run's and the /events watchers."""
    broker.publish(status_topic(run_id), item)
    broker.publish(EVENTS_TOPIC, item)


def announce_pipeline(broker: Broker, stored: StoredPipeline) -> None:
    """Tell this process's watchers about the committed `pending` events of a new pipeline."""
    assert stored.created_at is not None
    # Most triggers have nobody watching yet: no payload is built for nobody.
    if not broker.subscriber_count(EVENTS_TOPIC) and not any(
        broker.subscriber_count(status_topic(event.run_id)) for event in stored.events
    ):
        return
    for event in stored.events:
        publish(
            broker,
            event.run_id,
            payload(
                event_id=event.event_id,
                run_id=event.run_id,
                knot=stored.knot,
                rkey=stored.rkey,
                workflow=event.workflow,
                status=Status.PENDING,
                error=None,
                exit_code=None,
                created_at=stored.created_at,
            ),
        )
