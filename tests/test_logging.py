"""The service's own log: SPINDLE_LOG_FORMAT=json gives one JSON object per line, text stays text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli import configure_logging
from app.config import Settings
from tests.conftest import OWNER_DID
from tests.support.podman import PodmanEngine
from tests.support.process import SpindleProcess
from tests.support.servers import free_port


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after the test (pytest's own capture handlers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_log_lines_parse_with_time_level_logger_message_and_extra_fields(
    root_logger: logging.Logger, tmp_path: Path
) -> None:
    out = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="info", data_dir=tmp_path), stream=out)

    logging.getLogger("app.engine.queue").info("run %d claimed", 7, extra={"run_id": 7, "knot": "k.example"})
    logging.getLogger("app.knot").debug("not shown at info")
    try:
        raise ValueError('a "quoted"\nmulti-line problem')
    except ValueError:
        logging.getLogger("app.runs").exception("could not store")

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "app.engine.queue"
    assert first["message"] == "run 7 claimed"
    assert (first["run_id"], first["knot"]) == (7, "k.example")
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and second["message"] == "could not store"
    assert 'ValueError: a "quoted"\nmulti-line problem' in second["exc_info"]


def test_text_log_lines_stay_text(root_logger: logging.Logger, tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging(Settings(log_level="info", data_dir=tmp_path), stream=out)

    logging.getLogger("app.runs").warning("plain %s", "words")

    assert out.getvalue().endswith(" WARNING app.runs: plain words\n")


def test_spindle_serve_writes_every_log_line_as_json(tmp_path: Path, podman_engine: PodmanEngine) -> None:
    service = SpindleProcess(
        env={
            "SPINDLE_OWNER": OWNER_DID,
            "SPINDLE_DEV": "true",
            "SPINDLE_DATA_DIR": str(tmp_path / "data"),
            "SPINDLE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'spindle.db'}",
            "SPINDLE_LOG_FORMAT": "json",
            "SPINDLE_LOG_LEVEL": "info",
            **podman_engine.env(),
        },
        port=free_port(),
        log=tmp_path / "serve.log",
    )
    service.start()
    try:
        assert httpx.get(f"{service.url}/metrics", timeout=10).status_code == 200
    finally:
        service.stop()

    lines = [line for line in service.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, uvicorn's included
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    loggers = {record["logger"] for record in records}
    assert "uvicorn.access" in loggers and "app.engine.queue" in loggers
    assert any('"GET /metrics HTTP/1.1" 200' in record["message"] for record in records)
