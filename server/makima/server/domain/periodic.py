"""Background work that every server process repeats at an interval until the server stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class Periodic:
    """Runs `run_once()` every `interval` seconds in a task of its own, from `start()` until `stop()`.

    A failed round is logged and tried again at the next interval (most likely the database was
    unreachable): background work must never end the server.
    """

    name = "makima-periodic"
    # Whether the first round waits an interval (work that nothing can need right at start-up).
    delay_first = False

    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> None:
        """One round of the work."""
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _loop(self) -> None:
        if self.delay_first:
            await asyncio.sleep(self.interval)
        while True:
            try:
                await self.run_once()
            except Exception:
                log.warning("%s: a round failed; trying again in %s s", self.name, self.interval, exc_info=True)
            await asyncio.sleep(self.interval)
