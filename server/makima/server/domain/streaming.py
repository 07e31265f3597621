"""StreamTimeline: replay after a cursor, then follow new commits, with keep-alives.

Exactly-once, in-order delivery rests on two facts: cursors are allocated under the owner's row
lock, so the committed cursors of an owner are always a gap-free prefix 1..W (W, the watermark, is
the owner's `timeline_cursor`); and each round reads W first, then the events in (last, W]. Every
event up to W is thus either delivered or filtered out, and the stream can move `last` to W.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from makima.server.domain.history import check_timeline_scope
from makima.server.domain.runtime import Principal, Runtime
from makima.server.store import timeline
from makima.server.store.timeline import TimelineFilter
from makima.server.store.types import utcnow
from makima.server.timeline.hub import TimelineHub

REPLAY_BATCH = 500


@dataclass(frozen=True)
class KeepAlive:
    """Nothing new: every event up to `cursor` was delivered or did not match."""

    cursor: int
    server_time: datetime


async def follow_timeline(
    rt: Runtime,
    hub: TimelineHub,
    principal: Principal,
    *,
    where: TimelineFilter,
    after: int,
    keep_alive: float,
    recheck: float,
) -> AsyncIterator[Row[Any] | KeepAlive]:
    """Yield matching events after `after` forever, until the hub closes (server shutdown)."""
    owner = principal.owner_id
    async with rt.read() as session:
        await check_timeline_scope(session, owner, where)
    last = after
    quiet_since = time.monotonic()
    with hub.subscribe(owner) as wake:
        while not hub.closing.is_set():
            wake.clear()  # before reading: a commit during the read wakes the next wait
            async with rt.read() as session:
                mark = await timeline.watermark(session, owner_id=owner)
                rows = []
                if mark > last:
                    rows = await timeline.page(
                        session, owner_id=owner, where=where, after=last, upto=mark, limit=REPLAY_BATCH
                    )
            for row in rows:
                yield row
                last = row.cursor
            if rows:
                quiet_since = time.monotonic()
            if len(rows) == REPLAY_BATCH:
                continue
            last = max(last, mark)
            idle = time.monotonic() - quiet_since
            if idle >= keep_alive:
                yield KeepAlive(cursor=last, server_time=utcnow())
                quiet_since = time.monotonic()
                idle = 0.0
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(recheck, keep_alive - idle))
            except TimeoutError:
                pass
