"""A background loop: one task woken by an event and told to stop by a flag.

The scheduler, the pipeline writer and each run's log sink own one:

    loop = BackgroundLoop()
    loop.start(self._run(), name="...")   # the body loops `while not loop.stopping`, waiting on
    loop.event.set()                      # `loop.event` between rounds (it clears it itself)
    await loop.stop()                     # sets `stopping`, wakes the body, waits for it to return
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class BackgroundLoop:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Started, not told to stop, and its task has not ended."""
        return self.task is not None and not self.task.done() and not self.stopping

    def start(self, body: Coroutine[Any, Any, None], *, name: str) -> None:
        self.stopping = False
        self.task = asyncio.create_task(body, name=name)

    async def stop(self) -> None:
        """Tell the body to stop, wake it and wait until it has returned."""
        self.stopping = True
        self.event.set()
        if self.task is not None:
            await self.task
            self.task = None
