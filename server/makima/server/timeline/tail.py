"""A shared in-memory tail of each streamed owner's newest timeline events, and of the chunks being replayed.

Without it, every live stream of an owner would query the database on every commit: 100 subscribers
meant 100 queries per event. With it, one refresh per wake-up serves them all; a stream that is
further behind than the tail replays from the database instead, by chunks that every stream replaying
the same events shares (a reconnect storm reads and renders each chunk once).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

# fetch(after, floor) -> (watermark, rows with cursor in (max(after, floor), watermark]), rows in order.
Fetch = Callable[[int, int], Awaitable[tuple[int, list[Any]]]]


# Streams of one owner that may replay from the database at once. A reconnect storm (every follower
# of an owner back from cursor 0) otherwise fills the event loop with replays, and the owner's live
# streams, served from the tail, wait behind them; the rest of the storm waits its turn here instead.
REPLAYS_PER_OWNER = 4
# Chunks of CHUNK_EVENTS events, aligned on multiples of it, kept per owner for streams replaying them.
CHUNK_EVENTS = 500
CHUNKS_KEPT = 8


class OwnerTail:
    """Holds exactly the events with cursor in (floor, mark], at most `capacity` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.replays = asyncio.Semaphore(REPLAYS_PER_OWNER)
        self.rows: deque[Any] = deque()
        self.floor = 0
        self.mark = 0
        self.ready = False
        self._refreshed_at = float("-inf")
        self._lock = asyncio.Lock()
        self._chunks: OrderedDict[int, asyncio.Task[list[Any]]] = OrderedDict()

    async def chunk(self, index: int, fetch: Callable[[int, int], Coroutine[Any, Any, list[Any]]]) -> list[Any]:
        """The events with cursor in (index*CHUNK_EVENTS, (index+1)*CHUNK_EVENTS], read once for every stream.

        Only for a chunk wholly committed (at or below `mark`): committed events never change, so a
        chunk read once stays true. `fetch(after, upto)` reads it in a task of its own, so that the
        stream that asked first may go away without failing the others; a failed read is not kept.
        """
        read = self._chunks.get(index)
        if read is None:
            read = asyncio.create_task(fetch(index * CHUNK_EVENTS, (index + 1) * CHUNK_EVENTS))
            read.add_done_callback(functools.partial(self._forget_failed, index))
            self._chunks[index] = read
            while len(self._chunks) > CHUNKS_KEPT:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(index)
        return await asyncio.shield(read)

    def _forget_failed(self, index: int, read: asyncio.Task[list[Any]]) -> None:
        if (read.cancelled() or read.exception() is not None) and self._chunks.get(index) is read:
            del self._chunks[index]

    def covers(self, after: int) -> bool:
        """Whether every event after `after` that has been fetched is in memory."""
        return self.ready and after >= self.floor

    async def refresh(self, fetch: Fetch, *, requested_at: float) -> None:
        """Fetch what was committed since `mark`, unless a refresh started after `requested_at` did."""
        async with self._lock:
            if self._refreshed_at >= requested_at:
                return
            self._refreshed_at = time.monotonic()
            if not self.ready:
                self.mark, _ = await fetch(0, -1)  # start at the present: history is replayed from the database
                self.floor = self.mark
                self.ready = True
                return
            mark, rows = await fetch(self.mark, self.mark)
            if rows and rows[0].cursor > self.mark + 1:
                self.rows.clear()  # a burst larger than the tail: keep its newest part
                self.floor = rows[0].cursor - 1
            self.rows.extend(rows)
            while len(self.rows) > self.capacity:
                self.floor = self.rows.popleft().cursor
            self.mark = mark

    def after(self, cursor: int) -> list[Any]:
        """The rows after `cursor`, found by bisection: every stream of the owner asks on every wake-up."""
        start = bisect.bisect_right(self.rows, cursor, key=_cursor)
        return list(itertools.islice(self.rows, start, None))


def _cursor(row: Any) -> int:
    return int(row.cursor)
