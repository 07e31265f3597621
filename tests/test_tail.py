"""OwnerTail: the shared in-memory tail keeps exactly (floor, mark] and survives bursts."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from makima.server.timeline.tail import CHUNK_EVENTS, OwnerTail


class Log:
    """An append-only list of cursors standing in for one owner's committed timeline."""

    def __init__(self) -> None:
        self.cursor = 0
        self.fetches = 0

    def commit(self, n: int) -> None:
        self.cursor += n

    async def fetch(self, after: int, floor: int) -> tuple[int, list[SimpleNamespace]]:
        self.fetches += 1
        if floor < 0:
            return self.cursor, []
        start = max(after, self.cursor - 8)
        return self.cursor, [SimpleNamespace(cursor=c) for c in range(start + 1, self.cursor + 1)]


async def test_tail_holds_a_contiguous_window_and_skips_redundant_refreshes() -> None:
    log, tail = Log(), OwnerTail(capacity=5)
    log.commit(3)
    await tail.refresh(log.fetch, requested_at=time.monotonic())
    assert (tail.ready, tail.floor, tail.mark, list(tail.rows)) == (True, 3, 3, [])
    assert not tail.covers(2) and tail.covers(3)

    log.commit(4)
    asked = time.monotonic()
    await tail.refresh(log.fetch, requested_at=asked)
    await tail.refresh(log.fetch, requested_at=asked)  # a second stream woken by the same commit
    assert log.fetches == 2
    assert [r.cursor for r in tail.rows] == [4, 5, 6, 7]
    assert (tail.floor, tail.mark) == (3, 7)

    log.commit(3)  # overflows the capacity: the oldest fall out and the floor follows
    await tail.refresh(log.fetch, requested_at=time.monotonic())
    assert [r.cursor for r in tail.rows] == [6, 7, 8, 9, 10]
    assert (tail.floor, tail.mark) == (5, 10)
    assert [r.cursor for r in tail.after(8)] == [9, 10]

    log.commit(20)  # a burst beyond what one fetch returns: the window restarts at the burst's newest part
    await tail.refresh(log.fetch, requested_at=time.monotonic())
    assert [r.cursor for r in tail.rows] == [26, 27, 28, 29, 30]
    assert (tail.floor, tail.mark) == (25, 30)
    assert not tail.covers(10)


async def test_a_chunk_is_read_once_for_every_stream_and_a_failed_read_is_not_kept() -> None:
    tail = OwnerTail(capacity=5)
    reads: list[tuple[int, int]] = []
    gate = asyncio.Event()

    async def fetch(after: int, upto: int) -> list[SimpleNamespace]:
        reads.append((after, upto))
        await gate.wait()
        return [SimpleNamespace(cursor=c) for c in range(after + 1, upto + 1)]

    waiting = [asyncio.create_task(tail.chunk(1, fetch)) for _ in range(5)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # the stream that asked first goes away: the others still get the chunk
    gate.set()
    chunks = await asyncio.gather(*waiting[1:])
    assert reads == [(CHUNK_EVENTS, 2 * CHUNK_EVENTS)]
    assert all([r.cursor for r in chunk] == list(range(CHUNK_EVENTS + 1, 2 * CHUNK_EVENTS + 1)) for chunk in chunks)

    async def broken(after: int, upto: int) -> list[SimpleNamespace]:
        reads.append((after, upto))
        raise OSError("database gone")

    for _ in range(2):  # a failed read is not kept: the next stream reads again
        with pytest.raises(OSError):
            await tail.chunk(0, broken)
    assert reads[1:] == [(0, CHUNK_EVENTS)] * 2
