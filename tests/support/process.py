"""A real `spindle serve` in a subprocess, configured only through SPINDLE_* variables.

    service = SpindleProcess(env={"SPINDLE_DATABASE_URL": url, ...}, port=port, log=tmp / "serve.log")
    service.start()                      # spawns .venv/bin/spindle serve, waits for /healthz
    service.kill9()                      # SIGKILL: no shutdown code runs at all
    service.stop()                       # SIGTERM, then wait (SIGKILL after a grace period)
    service.cli("repo", "add", ...)      # the admin command with the same environment

Its output goes to `log` (read it with `service.output()` when a test fails).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SPINDLE = Path(sys.executable).with_name("spindle")
START_TIMEOUT = 60.0  # a safety net against a service that never comes up, not a timing assertion


class SpindleProcess:
    def __init__(self, *, env: Mapping[str, str], port: int, log: Path) -> None:
        # Only the test's settings: none leak in from the developer's shell.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SPINDLE_")}
        # Tests never reach the public Jetstream: a test that wants one names its own.
        self.env = {**inherited, "SPINDLE_JETSTREAM_URL": "", **env, "SPINDLE_LISTEN": f"127.0.0.1:{port}"}
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(SPINDLE), *args], env=self.env, capture_output=True, text=True, check=False, cwd="/"
        )
        if result.returncode != 0:
            raise RuntimeError(f"spindle {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def start(self) -> SpindleProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(SPINDLE), "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd="/"
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spindle serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"spindle serve did not answer /healthz:\n{self.output()}")
            time.sleep(0.1)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-8000:] if self.log.exists() else ""
