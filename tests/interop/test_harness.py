"""The reference-PDS harness itself: it must not leave processes, ports or files behind."""

from __future__ import annotations

import httpx
import pytest

from tests.interop.harness import ReferencePds

pytestmark = pytest.mark.pds


def test_harness_stops_cleanly_leaving_no_process_port_or_files() -> None:
    pds = ReferencePds().start()
    process, scratch, urls = pds.process, pds.scratch, [pds.pds_url, pds.plc_url, pds.control_url]
    assert process is not None and scratch is not None
    assert httpx.get(f"{pds.pds_url}/xrpc/_health").status_code == 200
    assert scratch.is_dir()

    pds.stop()

    assert process.returncode == 0  # it handled SIGTERM: closed the PDS and the PLC, then exited
    assert not scratch.exists()
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)
