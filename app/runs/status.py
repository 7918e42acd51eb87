"""Status transitions of a workflow run: stored as append-only events, announced after commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

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


class PipelineKey(Protocol):
    """What names a pipeline: a stored row, or the writer's answer for a new one."""

    @property
    def knot(self) -> str: ...
    @property
    def rkey(self) -> str: ...


def event_payload(run: WorkflowRun, event: StatusEvent) -> dict[str, Any]:
    """What status watchers receive: the run's identity and the transition."""
    return payload(
        run.pipeline,
        run.id,
        run.name,
        event_id=event.id,
        status=event.status,
        created_at=event.created_at,
        error=event.error,
        exit_code=event.exit_code,
    )


def payload(
    pipeline: PipelineKey,
    run_id: int,
    workflow: str,
    *,
    event_id: int,
    status: Status,
    created_at: datetime,
    error: str | None = None,
    exit_code: int | None = None,
) -> dict[str, Any]:
    """The watchers' payload of one transition of the run `run_id` (the workflow `workflow`)."""
    return {
        "id": event_id,
        "workflowRunId": run_id,
        "knot": pipeline.knot,
        "pipelineRkey": pipeline.rkey,
        "pipeline": pipeline_uri(pipeline.knot, pipeline.rkey),
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
    created_at = stored.created_at
    assert created_at is not None
    # Most triggers have nobody watching yet: no payload is built for nobody.
    if not broker.subscriber_count(EVENTS_TOPIC) and not any(
        broker.subscriber_count(status_topic(event.run_id)) for event in stored.events
    ):
        return
    for event in stored.events:
        item = payload(
            stored,
            event.run_id,
            event.workflow,
            event_id=event.event_id,
            status=Status.PENDING,
            created_at=created_at,
        )
        publish(broker, event.run_id, item)
