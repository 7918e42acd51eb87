"""Reading runs, log lines and status events back out of the database, shaped for watchers.

Every watcher works from the database alone (another process may be running the job); the
broker only makes it fast. Items carry the row `id`, which is how watchers drop duplicates.

Log items are dicts keyed like `LogLine`'s columns (`id`, `kind`, `content`, `time`, `step_id`,
`stream`, `step_status`, `step_command`, `step_kind`); status items are
`app.runs.status.event_payload` dicts.

`step_kind` on the wire: Tangled's spindle marshals its StepKind as an integer (`0` system, `1`
user; spindle/models `StepKind int`), and its appview decodes log lines into that struct, so a
string there would make it drop the line. Our JSON lines carry the integer; Tangled's CI
subscription (app.ci) carries the names. Lines stored before the column existed have none: a
step boundary with a command counts as `user`, anything else as `system`.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer, joinedload, selectinload

from app.config import Settings
from app.engine.logs import SYSTEM, USER, line_payload
from app.runs import service as runs_service
from app.runs.models import LogLine, Pipeline, Status, StatusEvent, WorkflowRun
from app.runs.status import event_payload
from app.runs.status import payload as status_payload

PAGE_SIZE = 1000
STATUS_NSID = "sh.tangled.pipeline.status"
# /events cursors at or above this are Unix nanoseconds, the cursor Tangled's appview keeps
# (it stores time.Now().UnixNano() of the last frame it read); smaller ones are event ids.
NANOSECOND_CURSOR = 10**15
# The fields of a Tangled log line (spindle/models LogLine), as named by our LogLine columns.
_LINE_FIELDS = ("kind", "content", "time", "step_id", "stream", "step_status", "step_command", "step_kind")
# Tangled's StepKind values (an iota in spindle/models/pipeline.go).
STEP_KIND_NUMBERS = {SYSTEM: 0, USER: 1}
_ITEM_COLUMNS = ("id", *_LINE_FIELDS)


class SeenIds:
    """Which item ids a watcher already handled: all up to `floor`, and those above it it has seen.

    `lookback` is 0 where one writer appends in id order (one run's log lines and transitions):
    then only the newest id is kept. /events takes transitions of many runs, whose ids
    PostgreSQL may commit out of order, so it re-reads `lookback` ids below the newest one.
    """

    def __init__(self, last: int = 0, *, lookback: int = 0) -> None:
        self.start = last  # everything up to here was handled before we began
        self.last = last
        self.lookback = lookback
        self._recent: set[int] = set()  # handled ids above `floor`
        self._order: deque[int] = deque()

    @property
    def floor(self) -> int:
        """Read the database from after this id to find anything not yet handled."""
        return max(self.last - self.lookback, self.start)

    def add(self, item_id: int) -> bool:
        """Mark `item_id` handled; False when it already was."""
        if item_id <= self.floor or item_id in self._recent:
            return False
        self.last = max(self.last, item_id)
        if self.lookback:
            self._recent.add(item_id)
            self._order.append(item_id)
            floor = self.floor
            while self._order and self._order[0] <= floor:
                self._recent.discard(self._order.popleft())
        return True

    def fresh(self, items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The items of `items` not handled yet, now marked handled, in order."""
        return [item for item in items if self.add(int(item["id"]))]


# --- lookups -----------------------------------------------------------------------------


async def find_run(*, session: AsyncSession, knot: str, rkey: str, workflow: str) -> WorkflowRun | None:
    """The workflow run `workflow` of pipeline (knot, rkey), if any."""
    return await session.scalar(
        select(WorkflowRun)
        .join(Pipeline, WorkflowRun.pipeline_id == Pipeline.id)
        .where(Pipeline.knot == knot, Pipeline.rkey == rkey, WorkflowRun.name == workflow)
        .options(defer(WorkflowRun.source), joinedload(WorkflowRun.pipeline).lazyload(Pipeline.workflow_runs))
    )


async def find_pipeline(*, session: AsyncSession, knot: str, rkey: str) -> Pipeline | None:
    """The pipeline (knot, rkey) with its workflow runs (without their sources), if any."""
    return await session.scalar(
        select(Pipeline)
        .where(Pipeline.knot == knot, Pipeline.rkey == rkey)
        .options(selectinload(Pipeline.workflow_runs).defer(WorkflowRun.source))
    )


async def run_status(*, session: AsyncSession, run_id: int) -> Status:
    """The run's current status, read fresh from the database."""
    status = await session.scalar(select(WorkflowRun.status).where(WorkflowRun.id == run_id))
    # A run deleted while watched is over as far as its watchers are concerned.
    return Status(status) if status is not None else Status.CANCELLED


async def log_items_after(
    *, session: AsyncSession, run_id: int, after: int, limit: int = PAGE_SIZE
) -> list[dict[str, Any]]:
    """Up to `limit` log items of the run with id > `after`, oldest first."""
    rows = await session.execute(
        select(*(getattr(LogLine, name) for name in _ITEM_COLUMNS))
        .where(LogLine.workflow_run_id == run_id, LogLine.id > after)
        .order_by(LogLine.id)
        .limit(limit)
    )
    return [line_payload(dict(row)) for row in rows.mappings()]


def _events_query() -> Any:
    return (
        select(StatusEvent, WorkflowRun)
        .join(WorkflowRun, StatusEvent.workflow_run_id == WorkflowRun.id)
        .options(
            defer(WorkflowRun.source),
            joinedload(WorkflowRun.pipeline).lazyload(Pipeline.workflow_runs),
        )
        .order_by(StatusEvent.id)
    )


async def status_items_after(
    *, session: AsyncSession, after: int, run_ids: Sequence[int] | None = None, limit: int = PAGE_SIZE
) -> list[dict[str, Any]]:
    """Up to `limit` transitions with id > `after` (of the runs `run_ids`, or of all), oldest first."""
    query = _events_query().where(StatusEvent.id > after).limit(limit)
    if run_ids is not None:
        query = query.where(StatusEvent.workflow_run_id.in_(run_ids))
    result = await session.execute(query)
    return [event_payload(run, event) for event, run in result.all()]


async def events_after(*, session: AsyncSession, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` transitions of every run with id > `after`, oldest first: what
    status_items_after gives, read as plain columns (no ORM objects), for replaying /events."""
    rows = await session.execute(
        select(
            StatusEvent.id,
            StatusEvent.status,
            StatusEvent.error,
            StatusEvent.exit_code,
            StatusEvent.created_at,
            WorkflowRun.id.label("run_id"),
            WorkflowRun.name,
            Pipeline.knot,
            Pipeline.rkey,
        )
        .join(WorkflowRun, StatusEvent.workflow_run_id == WorkflowRun.id)
        .join(Pipeline, WorkflowRun.pipeline_id == Pipeline.id)
        .where(StatusEvent.id > after)
        .order_by(StatusEvent.id)
        .limit(limit)
    )
    return [
        status_payload(
            row,  # knot and rkey: what names the pipeline
            row.run_id,
            row.name,
            event_id=row.id,
            status=row.status,
            created_at=row.created_at,
            error=row.error,
            exit_code=row.exit_code,
        )
        for row in rows
    ]


async def all_status_items(*, session: AsyncSession, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every transition of the runs `run_ids`, oldest first."""
    items: list[dict[str, Any]] = []
    while True:
        page = await status_items_after(
            session=session, after=int(items[-1]["id"]) if items else 0, run_ids=run_ids
        )
        items += page
        if len(page) < PAGE_SIZE:
            return items


async def event_id_before(*, session: AsyncSession, since: datetime) -> int:
    """The id just below the first transition created after `since`: a time cursor as an id one."""
    first = await session.scalar(select(func.min(StatusEvent.id)).where(StatusEvent.created_at > since))
    if first is None:
        return await last_event_id(session=session)
    return int(first) - 1


async def latest_status_items(*, session: AsyncSession, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The most recent transition of each of the runs `run_ids` that has one, oldest first."""
    newest = (
        select(func.max(StatusEvent.id))
        .where(StatusEvent.workflow_run_id.in_(run_ids))
        .group_by(StatusEvent.workflow_run_id)
    )
    result = await session.execute(_events_query().where(StatusEvent.id.in_(newest)))
    return [event_payload(run, event) for event, run in result.all()]


async def latest_status_item(*, session: AsyncSession, run_id: int) -> dict[str, Any] | None:
    """The run's most recent transition."""
    items = await latest_status_items(session=session, run_ids=(run_id,))
    return items[0] if items else None


async def last_event_id(*, session: AsyncSession) -> int:
    """The newest status event id (0 when there is none): where a live-only /events starts."""
    return int(await session.scalar(select(func.max(StatusEvent.id))) or 0)


# --- shapes ------------------------------------------------------------------------------


def as_utc(value: datetime | str) -> datetime:
    """A stored or published time as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        # SQLite hands back naive datetimes; we only ever store UTC.
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_time(value: datetime | str) -> str:
    """RFC 3339 in UTC with trailing zeros of the fraction dropped, as Go's time.Time marshals."""
    value = as_utc(value)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def format_datetime(value: datetime | str | None) -> str | None:
    """An atproto datetime (millisecond precision, `Z`), or None."""
    if value is None:
        return None
    return as_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def step_kind(item: Mapping[str, Any]) -> str:
    """`system` or `user`: the stored kind, or for a line stored without one, a guess (module docstring)."""
    kind = item.get("step_kind")
    if kind in STEP_KIND_NUMBERS:
        return str(kind)
    return USER if item.get("kind") == "control" and item.get("step_command") else SYSTEM


def tangled_log_line(item: Mapping[str, Any]) -> dict[str, Any]:
    """The Tangled spindle's JSON log line (spindle/models LogLine) for a log item."""
    return {
        "kind": item.get("kind") or "data",
        "content": item.get("content") or "",
        "time": format_time(item["time"]) if item.get("time") else None,
        "step_id": item.get("step_id") or 0,
        "stream": item.get("stream"),
        "step_status": item.get("step_status"),
        "step_command": item.get("step_command"),
        "step_kind": STEP_KIND_NUMBERS[step_kind(item)],
    }


@functools.lru_cache(maxsize=4096)
def _encode_line(values: tuple[Any, ...]) -> str:
    return json.dumps(tangled_log_line(dict(zip(_LINE_FIELDS, values, strict=True))), ensure_ascii=False)


def encode_log_line(item: Mapping[str, Any]) -> str:
    """The WebSocket frame of a log item, made once however many watchers send it."""
    return _encode_line(tuple(item.get(name) for name in _LINE_FIELDS))


def render_log_line(item: Mapping[str, Any]) -> str:
    """One log item as plain text: data lines verbatim, step starts and ends marked."""
    content = item.get("content") or ""
    if item.get("kind") != "control":
        return content
    step = item.get("step_id") or 0
    # The spindle's own steps are marked; the workflow's read as before.
    label = f"step {step}" if step_kind(item) == USER else f"step {step} (system)"
    if item.get("step_status") == "end":
        return f"■ end of {label}: {content}"
    command = item.get("step_command")
    if command and command != content:
        return f"▶ {label}: {content}\n" + "\n".join(f"  $ {part}" for part in command.splitlines())
    return f"▶ {label}: {content or command or ''}"


_TRANSITION_KEYS = ("id", "status", "error", "exitCode", "createdAt")
_RUN_KEYS = ("workflow", "pipelineRkey", "knot", "pipeline")


def transition(item: Mapping[str, Any], *, with_run: bool = True) -> dict[str, Any]:
    """A status item as watchers of one run see it (None fields left out), with or without the run."""
    keys = _TRANSITION_KEYS + _RUN_KEYS if with_run else _TRANSITION_KEYS
    shown = {key: item[key] for key in keys if item.get(key) is not None}
    shown["createdAt"] = format_datetime(item["createdAt"])
    return shown


def is_finished(item: Mapping[str, Any]) -> bool:
    return Status(item["status"]).is_finished


def make_tid(micros: int, clock_id: int) -> str:
    """An atproto TID: 53 bits of microseconds and 10 of clock id, base32-sortable."""
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    value = ((micros & ((1 << 53) - 1)) << 10) | (clock_id & 1023)
    return "".join(alphabet[(value >> (5 * i)) & 31] for i in range(12, -1, -1))


def event_frame(item: Mapping[str, Any]) -> dict[str, Any]:
    """An /events frame as Tangled's spindle sends it, plus `cursor` (our event id) to resume from."""
    created = as_utc(item["createdAt"])
    record: dict[str, Any] = {
        "$type": STATUS_NSID,
        "pipeline": item["pipeline"],
        "workflow": item["workflow"],
        "status": item["status"],
        "createdAt": format_datetime(created),
    }
    if item.get("error") is not None:
        record["error"] = item["error"]
    if item.get("exitCode") is not None:
        record["exitCode"] = item["exitCode"]
    # The rkey is derived from the event, so a replay carries the same rkey as the live frame.
    micros = int(created.timestamp() * 1_000_000)
    rkey = make_tid(micros, int(item["id"]))
    return {"rkey": rkey, "nsid": STATUS_NSID, "event": record, "cursor": item["id"]}


def nanoseconds_to_datetime(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000_000, tz=UTC)


# --- URLs --------------------------------------------------------------------------------


def run_path(knot: str, rkey: str) -> str:
    """`{knot}/{rkey}` as it appears in our URLs (the trigger's logsUrl and statusUrl quote alike)."""
    return f"{quote(knot, safe=':')}/{quote(rkey, safe='')}"


def run_url(settings: Settings, knot: str, rkey: str) -> str:
    return f"{settings.base_url}/runs/{run_path(knot, rkey)}"


async def status_documents(
    *, session: AsyncSession, settings: Settings, pipeline: Pipeline, runs: Sequence[WorkflowRun]
) -> list[dict[str, Any]]:
    """The status document of each of `runs` (of `pipeline`), in the order given."""
    events: dict[int, list[dict[str, Any]]] = {run.id: [] for run in runs}
    for item in await all_status_items(session=session, run_ids=list(events)):
        events[item["workflowRunId"]].append(item)
    return [
        status_document(settings=settings, run=run, pipeline=pipeline, events=events[run.id]) for run in runs
    ]


def status_document(
    *, settings: Settings, run: WorkflowRun, pipeline: Pipeline, events: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """What `GET /status/.../{workflow}` answers: the run's state, its URLs and every transition so far."""
    urls = runs_service.workflow_result(
        settings=settings, knot=pipeline.knot, rkey=pipeline.rkey, workflow=run.name
    )
    doc: dict[str, Any] = {"status": Status(run.status).value}
    if run.error is not None:
        doc["error"] = run.error
    if run.exit_code is not None:
        doc["exitCode"] = run.exit_code
    doc.update(
        {
            "workflow": run.name,
            "pipelineRkey": pipeline.rkey,
            "knot": pipeline.knot,
            "pipeline": pipeline.pipeline_uri,
            "createdAt": format_datetime(run.created_at),
            "startedAt": format_datetime(run.started_at),
            "finishedAt": format_datetime(run.finished_at),
            "logsUrl": urls.logsUrl,
            "statusUrl": urls.statusUrl,
            "runUrl": run_url(settings, pipeline.knot, pipeline.rkey),
            "events": [transition(item, with_run=False) for item in events],
        }
    )
    return doc
