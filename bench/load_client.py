"""A minimal HTTP/1.1 keep-alive load generator, run as a process of its own by bench_trigger.py.

    python bench/load_client.py < job.pickle     # prints {"done": N, "seconds": S} as JSON

The job (a pickled dict): `port`, `requests` (complete HTTP requests as bytes, each sent once),
`seconds`, `concurrency`. Each connection sends a request, reads the whole answer, sends the next;
any answer but 200 stops the run with its status line. Standard library only, so that it starts
in a few milliseconds, and nothing but the load shares its process (the server under test never
waits for the client's Python: the client has a GIL of its own).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from typing import Any


async def run(job: dict[str, Any]) -> dict[str, Any]:
    queue = iter(job["requests"])
    done = 0
    deadline = time.perf_counter() + job["seconds"]

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", job["port"])
        try:
            for request in queue:
                if time.perf_counter() > deadline:
                    return
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                payload = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{head.splitlines()[0]!r} {payload[:300]!r}")
                done += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
    return {"done": done, "seconds": time.perf_counter() - started}


def main() -> None:
    job = pickle.load(sys.stdin.buffer)
    try:
        result = asyncio.run(run(job))
    except Exception as exc:  # reported to the bench, which stops with it
        result = {"error": str(exc)}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
