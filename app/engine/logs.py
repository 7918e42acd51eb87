"""A run's log: Tangled-compatible lines, stored in batches, then published to watchers.

Lines are buffered and written as LogLine rows in one transaction every FLUSH_INTERVAL seconds
or BATCH_LINES lines, whichever comes first; after the commit the batch goes to the broker
topic `logs_topic(run_id)` as one list of dicts (see `line_payload`). The broker never blocks,
so no number of watchers slows a step down. A run may store at most MAX_LINES lines and
`max_bytes` (SPINDLE_RUN_LOG_MB) of content, every stored line counted, step boundaries and their
commands included; past that a control line says the log was truncated and further output is
counted but dropped. Every line is masked first (`masker`, app.engine.masking): the run's secret
values and what its steps registered with `::add-mask::` never reach the database or a watcher.
Step start/end lines are still kept, without their command, so that the log
keeps its shape, but only within a small reserve (CONTROL_RESERVE_BYTES): a run of endless empty
steps cannot grow the log past its cap either.

Every line has a `step_kind`, as Tangled's spindle gives its steps one: `user` for the steps the
workflow wrote (a step boundary is `user` unless said otherwise), `system` for what the spindle
adds (its notices, the truncation note). A data line takes the kind of its step; a line outside
any step is `system`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.background import BackgroundLoop
from app.database import utcnow
from app.engine import masking
from app.engine.masking import Masker
from app.metrics import Metrics
from app.runs.models import LogLine, WorkflowRun
from app.streams.broker import Broker, logs_topic

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05
BATCH_LINES = 200
MAX_LINES = 200_000
MAX_BYTES = 50 * 1024 * 1024
MAX_LINE_CHARS = 16 * 1024
TRUNCATED_SUFFIX = " … [line truncated]"
CONTROL_RESERVE_BYTES = 1024 * 1024

SYSTEM = "system"
USER = "user"
STEP_KINDS = (SYSTEM, USER)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def line_payload(row: dict[str, Any]) -> dict[str, Any]:
    """What watchers receive for one stored line: the Tangled fields plus the row id."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "content": row["content"],
        "time": _iso(row["time"]),
        "step_id": row["step_id"],
        "stream": row["stream"],
        "step_status": row["step_status"],
        "step_command": row["step_command"],
        "step_kind": row["step_kind"],
    }


@dataclass(kw_only=True, eq=False)
class LogSink:
    """Collects one run's lines; `start()` before the first line, `close()` flushes the rest."""

    run_id: int
    sessionmaker: async_sessionmaker[AsyncSession]
    broker: Broker
    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    max_line_chars: int = MAX_LINE_CHARS
    masker: Masker = field(default_factory=Masker)
    metrics: Metrics | None = None
    lines: int = field(default=0, init=False)
    bytes: int = field(default=0, init=False)
    dropped: int = field(default=0, init=False)
    truncated: bool = field(default=False, init=False)
    _buffer: list[dict[str, Any]] = field(default_factory=list, init=False)
    _buffer_bytes: int = field(default=0, init=False)  # the buffered lines' share of `bytes`
    # The kind of each step seen so far (from its boundary lines): what its data lines carry.
    _step_kinds: dict[int, str] = field(default_factory=dict, init=False)
    # Set when BATCH_LINES are buffered: the flusher writes them without waiting FLUSH_INTERVAL.
    _flusher: BackgroundLoop = field(default_factory=BackgroundLoop, init=False)

    async def start(self) -> None:
        masking.register(self.masker)
        self._flusher.start(self._flush_loop(), name=f"logs-{self.run_id}")

    async def close(self) -> None:
        """Write everything still buffered; after this the log is complete in the database."""
        try:
            await self._flusher.stop()
            await self.flush()
        finally:
            masking.unregister(self.masker)

    def data(self, content: str, *, stream: str, step_id: int | None, step_kind: str | None = None) -> None:
        """One line a process wrote (stream is stdout or stderr); its kind is its step's unless given."""
        if self.truncated:
            self.dropped += 1
            return
        if step_id is not None and stream in ("stdout", "stderr"):
            # `::add-mask::<value>`, a workflow command: the value is masked from this line on.
            command = self.masker.take_command(content)
            if command is not None:
                content = command
        content = self.masker.mask(content)
        if len(content) > self.max_line_chars:
            content = content[: self.max_line_chars] + TRUNCATED_SUFFIX
        size = len(content.encode("utf-8", errors="replace"))
        if self.lines + 1 > self.max_lines or self.bytes + size > self.max_bytes:
            self.dropped += 1
            self._truncate(step_id)
            return
        self.lines += 1
        self.bytes += size
        self._buffer_bytes += size
        if step_kind is None:
            step_kind = self._step_kinds.get(step_id, SYSTEM) if step_id is not None else SYSTEM
        self._add("data", content, stream=stream, step_id=step_id, step_kind=step_kind)

    def notice(self, content: str, *, step_id: int | None = None) -> None:
        """A line from the spindle itself about the run (what it skipped, ignored, or why it failed)."""
        self.data(f"spindle: {content}", stream="stderr", step_id=step_id)

    def control(
        self,
        content: str,
        *,
        step_id: int | None,
        step_status: str | None = None,
        step_command: str | None = None,
        step_kind: str = USER,
    ) -> None:
        """A step boundary (step_status start|end) or a note about the log itself."""
        content = self.masker.mask(content)
        if step_command is not None:
            step_command = self.masker.mask(step_command)
        if step_kind not in STEP_KINDS:
            raise ValueError(f"step_kind must be one of {STEP_KINDS}, not {step_kind!r}")
        if step_id is not None and step_status is not None:
            self._step_kinds[step_id] = step_kind
        if len(content) > self.max_line_chars:
            content = content[: self.max_line_chars] + TRUNCATED_SUFFIX
        if step_command is not None and len(step_command) > self.max_line_chars:
            step_command = step_command[: self.max_line_chars] + TRUNCATED_SUFFIX
        if self.truncated:
            step_command = None  # past the cap, a boundary keeps the log's shape and nothing more
        size = len(content.encode("utf-8", errors="replace"))
        if step_command is not None:
            size += len(step_command.encode("utf-8", errors="replace"))
        budget = self.max_bytes + (CONTROL_RESERVE_BYTES if self.truncated else 0)
        if self.bytes + size > budget or self.lines + 1 > self.max_lines + (1000 if self.truncated else 0):
            if self.truncated:
                self.dropped += 1
                return
            self._truncate(step_id)
            step_command = None
        self.lines += 1
        self.bytes += size
        self._buffer_bytes += size
        self._add(
            "control",
            content,
            step_id=step_id,
            step_status=step_status,
            step_command=step_command,
            step_kind=step_kind,
        )

    def _truncate(self, step_id: int | None) -> None:
        self.truncated = True
        self.control(
            f"log truncated: this run wrote more than {self.max_lines} lines or "
            f"{self.max_bytes // (1024 * 1024)} MB; further output is not kept",
            step_id=step_id,
            step_kind=SYSTEM,
        )

    def _add(
        self,
        kind: str,
        content: str,
        *,
        step_id: int | None,
        stream: str | None = None,
        step_status: str | None = None,
        step_command: str | None = None,
        step_kind: str,
    ) -> None:
        self._buffer.append(
            {
                "workflow_run_id": self.run_id,
                "kind": kind,
                "content": content,
                "stream": stream,
                "step_id": step_id,
                "step_status": step_status,
                "step_command": step_command,
                "step_kind": step_kind,
                "time": utcnow(),
            }
        )
        if len(self._buffer) >= BATCH_LINES:
            self._flusher.event.set()

    async def _flush_loop(self) -> None:
        while not self._flusher.stopping:
            try:
                await asyncio.wait_for(self._flusher.event.wait(), FLUSH_INTERVAL)
            except TimeoutError:
                pass
            self._flusher.event.clear()
            await self.flush()

    async def flush(self) -> None:
        """Store the buffered lines in one transaction, then publish them (never the other way)."""
        while self._buffer:
            batch, self._buffer = self._buffer, []
            size, self._buffer_bytes = self._buffer_bytes, 0
            try:
                async with self.sessionmaker() as session:
                    # Multi-row INSERT … RETURNING. Rows of one statement get increasing ids in
                    # VALUES order, so sorting the returned ids pairs them with the rows;
                    # asking SQLAlchemy to keep the order makes SQLite insert row by row (10x slower).
                    ids = sorted(await session.scalars(insert(LogLine).returning(LogLine.id), batch))
                    # The run's stored log size, in the same transaction: what retention's size cap sums.
                    await session.execute(
                        update(WorkflowRun)
                        .where(WorkflowRun.id == self.run_id)
                        .values(log_bytes=WorkflowRun.log_bytes + size)
                        .execution_options(synchronize_session=False)
                    )
                    await session.commit()
            except Exception:
                # A log write must never take the run down with it; the lines are lost, say so.
                log.exception("could not store %d log lines of run %d", len(batch), self.run_id)
                continue
            if self.metrics is not None:
                self.metrics.log_bytes_stored(size)
            for row, row_id in zip(batch, ids, strict=True):
                row["id"] = row_id
            topic = logs_topic(self.run_id)
            for start in range(0, len(batch), BATCH_LINES):
                self.broker.publish(topic, [line_payload(row) for row in batch[start : start + BATCH_LINES]])
