"""The reference atproto PDS (@atproto/dev-env from npm) as a child process, driven from Python.

    with ReferencePds() as pds:
        alice = pds.create_account()                       # a real did:plc on the dev-env PLC
        token = pds.service_auth(alice, aud=service_did, lxm=NSID)   # com.atproto.server.getServiceAuth
        response = pds.call_through_proxy(alice, NSID, body, service_did=service_did)

`pds.mjs` (beside this file) starts a PLC directory and a PDS on localhost and answers a small
control API on loopback; see its header. The PDS proxies a call carrying
`atproto-proxy: <service DID>#tangled_spindle` by resolving the service's did:web (plain http for
`localhost` only), reading that service entry's endpoint, minting a service-auth JWT with
aud = the bare service DID and lxm = the called NSID, and forwarding the request.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from tests.support.servers import ServerThread

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "pds.mjs"
DEV_ENV = HERE / "node_modules" / "@atproto" / "dev-env"
SERVICE_ID = "tangled_spindle"
START_TIMEOUT = 90.0  # seconds; loading the PDS's modules takes ~4 s on an idle 2-core machine


def harness_installed() -> bool:
    return DEV_ENV.is_dir() and shutil.which("node") is not None


@dataclass(frozen=True)
class Account:
    did: str
    handle: str
    access_jwt: str


@dataclass(frozen=True)
class Spindle:
    """Our service under uvicorn on `localhost:<port>`, where the PDS can resolve and reach it."""

    settings: Settings
    server: ServerThread

    @property
    def did(self) -> str:
        return self.settings.did

    @property
    def url(self) -> str:
        return self.settings.base_url


class PdsError(Exception):
    """The PDS (or the harness) refused a request: HTTP status and the XRPC error name."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class ReferencePds:
    """A running `pds.mjs`: its PLC and PDS URLs, and helpers that talk to them."""

    def __init__(self) -> None:
        self.plc_url = ""
        self.pds_url = ""
        self.control_url = ""
        self.scratch: Path | None = None  # the PDS's data files, removed by pds.mjs when it exits
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir = tempfile.TemporaryDirectory(prefix="spindle-pds-log-")
        self.log_path = Path(self._logdir.name) / "pds.stderr.log"
        self._http = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ReferencePds:
        if not harness_installed():
            raise RuntimeError(f"the reference PDS is not installed: run `npm ci` in {HERE} (needs node)")
        node = shutil.which("node")
        assert node is not None
        try:
            # stdin stays open as a pipe: if this process dies, its end closes and the harness exits.
            # ipv4first: `localhost` must mean 127.0.0.1, where our test servers listen.
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    [node, "--dns-result-order=ipv4first", str(SCRIPT), "--watch-stdin"],
                    cwd=HERE,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            ready = self._read_event(deadline=time.monotonic() + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.plc_url, self.pds_url, self.control_url = ready["plc"], ready["pds"], ready["control"]
        self.scratch = Path(ready["scratch"])
        return self

    def _read_event(self, *, deadline: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            buffered = b""
            while b"\n" not in buffered:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(
                        f"the reference PDS did not start in {START_TIMEOUT:.0f} s{self._log_tail()}"
                    )
                if not selector.select(timeout=min(remaining, 1.0)):
                    continue
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"the reference PDS exited before it was ready{self._log_tail()}")
                buffered += chunk
        event: dict[str, Any] = json.loads(buffered.split(b"\n", 1)[0])
        if event.get("event") != "ready":
            raise RuntimeError(f"unexpected first line from pds.mjs: {event}")
        return event

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n--- pds.mjs stderr ---\n" + text[-4000:] if text else ""

    def stop(self) -> None:
        """SIGTERM, then wait for a clean exit (the harness closes the PDS and PLC and removes its files)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self._http.close()
        self._logdir.cleanup()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def __enter__(self) -> ReferencePds:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- accounts and tokens ---------------------------------------------------------------------

    def _control(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._http.post(self.control_url + path, json=body)
        data: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise PdsError(response.status_code, data.get("error", "Error"), data.get("message", ""))
        return data

    def create_account(self, name: str | None = None) -> Account:
        """A new account on the PDS (a did:plc registered on the dev-env PLC), logged in."""
        data = self._control("/accounts", {"name": name} if name else {})
        return Account(did=data["did"], handle=data["handle"], access_jwt=data["accessJwt"])

    def service_auth(
        self, account: Account, *, aud: str, lxm: str | None = None, exp: int | None = None
    ) -> str:
        """A service-auth JWT from `com.atproto.server.getServiceAuth`, as a client would request it."""
        body: dict[str, Any] = {"did": account.did, "aud": aud}
        if lxm is not None:
            body["lxm"] = lxm
        if exp is not None:
            body["exp"] = exp
        return str(self._control("/service-auth", body)["token"])

    # -- proxying --------------------------------------------------------------------------------

    def call_through_proxy(
        self,
        account: Account,
        nsid: str,
        body: Any,
        *,
        service_did: str,
        service_id: str = SERVICE_ID,
        timeout: float = 30.0,
    ) -> httpx.Response:
        """POST an XRPC procedure to the PDS with the account's session; the PDS forwards it to us."""
        return self._http.post(
            f"{self.pds_url}/xrpc/{nsid}",
            json=body,
            headers={
                "Authorization": f"Bearer {account.access_jwt}",
                "atproto-proxy": f"{service_did}#{service_id}",
            },
            timeout=timeout,
        )
