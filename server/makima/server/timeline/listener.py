"""PostgreSQL LISTEN on the timeline channel: a commit in any server process wakes streams here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from makima.server.store.timeline import NOTIFY_CHANNEL
from makima.server.timeline.hub import TimelineHub

log = logging.getLogger(__name__)


def asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresListener:
    """Holds one dedicated connection (outside the pool) that LISTENs and feeds the hub.

    On a lost connection it reconnects with backoff and wakes every stream, since notifications sent
    meanwhile are gone.
    """

    def __init__(self, url: URL, hub: TimelineHub) -> None:
        self._dsn = asyncpg_dsn(url)
        self._hub = hub
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="makima-timeline-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        owner, _, cursor = payload.partition(":")
        try:
            self._hub.publish(uuid.UUID(owner), int(cursor))
        except ValueError:
            log.warning("ignoring malformed timeline notification", extra={"payload": payload})

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("timeline listener cannot connect, retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                delay = 0.1
                self.connected.set()
                self._hub.publish_all()
                await lost.wait()
                log.warning("timeline listener lost its connection, reconnecting")
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
