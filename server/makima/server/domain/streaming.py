"""StreamTimeline: replay after a cursor, then follow new commits, with keep-alives.

Exactly-once, in-order delivery rests on two facts: cursors are allocated under the owner's row
lock, so the committed cursors of an owner are always a gap-free prefix 1..W (W, the watermark, is
the owner's `timeline_cursor`); and each round reads W first, then the events in (last, W]. Every
event up to W is thus either delivered or filtered out, and the stream can move `last` to W.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from makima.server import telemetry
from makima.server.domain.history import check_timeline_scope
from makima.server.domain.runtime import Caller
from makima.server.store import timeline
from makima.server.store.timeline import StoredHistoryEvent, TimelineFilter
from makima.server.store.types import utcnow
from makima.server.timeline.hub import TAIL_CAPACITY
from makima.server.timeline.tail import CHUNK_EVENTS

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rendered(Generic[T]):
    """A tail event with its rendering: a hundred streams of an owner send one event rendered once."""

    row: StoredHistoryEvent
    item: T

    @property
    def cursor(self) -> int:
        return self.row.cursor


@dataclass(frozen=True)
class KeepAlive:
    """Nothing new: every event up to `cursor` was delivered or did not match."""

    cursor: int
    server_time: datetime


@dataclass(frozen=True)
class ReplayEnded:
    """Sent once, as soon as every past event up to `cursor` was replayed: what follows is live."""

    cursor: int
    server_time: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class FollowTimelineInput:
    where: TimelineFilter
    # The cursor of the last event seen (0: from the start).
    after: int
    # Seconds without an event before a KeepAlive.
    keep_alive: float
    # Seconds between looks at the database while waiting, in case a wake-up was missed.
    recheck: float


async def follow_timeline(
    caller: Caller, inp: FollowTimelineInput, *, render: Callable[[StoredHistoryEvent], T]
) -> AsyncIterator[list[T] | KeepAlive | ReplayEnded]:
    """Yield matching events after `inp.after`, rendered by `render`, forever, until the hub closes (server shutdown).

    Events come in lists of consecutive events (never empty), as many as were found at once: the
    caller sends them one per message or several together.

    A stream behind the owner's shared tail pages through the database; once caught up it is served
    from the tail, which one database read per wake-up refreshes for every stream of the owner, and
    whose events are rendered once for all of them (every stream of a server renders the same way).
    """
    rt, hub, owner, where, keep_alive = caller.rt, caller.rt.hub, caller.owner_id, inp.where, inp.keep_alive
    async with rt.read() as session:
        await check_timeline_scope(session, owner, where)

    async def fetch(after_cursor: int, floor: int) -> tuple[int, list[Rendered[T]]]:
        async with rt.read() as session:
            mark = await timeline.watermark(session, owner_id=owner)
            if floor < 0 or mark <= after_cursor:
                return mark, []
            start = max(after_cursor, mark - TAIL_CAPACITY)
            rows = await timeline.page(
                session, owner_id=owner, where=TimelineFilter(), after=start, upto=mark, limit=TAIL_CAPACITY
            )
            return mark, [Rendered(row, render(row)) for row in rows]

    async def fetch_chunk(after_cursor: int, upto: int) -> list[Rendered[T]]:
        async with rt.read() as session:
            rows = await timeline.page(
                session, owner_id=owner, where=TimelineFilter(), after=after_cursor, upto=upto, limit=CHUNK_EVENTS
            )
        return [Rendered(row, render(row)) for row in rows]

    last = inp.after
    replaying = True
    quiet_since = time.monotonic()
    with hub.subscribe(owner) as (wake, tail):
        while not hub.closing.is_set():
            wake.clear()  # before reading: a commit during the read wakes the next wait
            if not tail.ready or tail.covers(last):
                await tail.refresh(fetch, requested_at=time.monotonic())
            full = False
            chunk_end = (last // CHUNK_EVENTS + 1) * CHUNK_EVENTS
            if tail.covers(last):
                mark = tail.mark
                items = [entry.item for entry in tail.after(last) if where.matches(entry.row)]
                _observe_lag(items, mark, last)
                if items:
                    yield items
            elif where.keeps_all and chunk_end <= tail.mark:
                # A whole committed chunk: shared with every other stream of the owner replaying it.
                async with tail.replays:  # held until the batch is sent (see REPLAYS_PER_OWNER)
                    chunk = await tail.chunk(last // CHUNK_EVENTS, fetch_chunk)
                    items = [entry.item for entry in chunk[bisect.bisect_right(chunk, last, key=_cursor) :]]
                    _observe_lag(items, chunk_end, last)
                    if items:
                        yield items
                last, mark, full = chunk_end, chunk_end, True
            else:
                async with tail.replays:
                    async with rt.read() as session:
                        mark = await timeline.watermark(session, owner_id=owner)
                        rows = await timeline.page(
                            session, owner_id=owner, where=where, after=last, upto=mark, limit=CHUNK_EVENTS
                        )
                    full = len(rows) == CHUNK_EVENTS
                    _observe_lag(rows, mark, last)
                    if rows:
                        yield [render(row) for row in rows]
                        last = rows[-1].cursor
                items = rows
            if items:
                quiet_since = time.monotonic()
            if full:
                continue
            last = max(last, mark)
            if replaying:
                replaying = False
                yield ReplayEnded(cursor=last, server_time=utcnow())
            idle = time.monotonic() - quiet_since
            if idle >= keep_alive:
                yield KeepAlive(cursor=last, server_time=utcnow())
                quiet_since = time.monotonic()
                idle = 0.0
            # asyncio.timeout, not wait_for: no task per wait, and a hundred streams wait on every commit.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(inp.recheck, keep_alive - idle)):
                    await wake.wait()


def _cursor(entry: Rendered[Any]) -> int:
    return entry.cursor


def _observe_lag(rows: list[Any], mark: int, last: int) -> None:
    """How far behind the newest cursor a stream was when it woke with rows to send (metrics on)."""
    if rows and telemetry.METRICS is not None:
        telemetry.METRICS.lag.observe(mark - last)
