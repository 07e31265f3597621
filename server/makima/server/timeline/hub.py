"""In-process wake-ups for timeline streams, per owner."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from makima.server.timeline.tail import OwnerTail

TAIL_CAPACITY = 2048


class TimelineHub:
    """Streams register an event per owner; a commit for that owner sets it."""

    def __init__(self) -> None:
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self._tails: dict[uuid.UUID, OwnerTail] = {}
        self.closing = asyncio.Event()

    def publish(self, owner_id: uuid.UUID, cursor: int = 0) -> None:
        """Wake the owner's streams: something up to `cursor` was committed."""
        for waiter in self._waiters.get(owner_id, ()):
            waiter.set()

    def publish_all(self) -> None:
        """Wake every stream (e.g. after notifications may have been missed)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    @contextmanager
    def subscribe(self, owner_id: uuid.UUID) -> Iterator[tuple[asyncio.Event, OwnerTail]]:
        """A wake-up event for one stream, and the owner's shared tail (kept while anyone listens)."""
        waiter = asyncio.Event()
        self._waiters[owner_id].add(waiter)
        tail = self._tails.setdefault(owner_id, OwnerTail(TAIL_CAPACITY))
        try:
            yield waiter, tail
        finally:
            self._waiters[owner_id].discard(waiter)
            if not self._waiters[owner_id]:
                del self._waiters[owner_id]
                del self._tails[owner_id]

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self.closing.set()
        self.publish_all()

    @property
    def subscriber_count(self) -> int:
        return sum(len(w) for w in self._waiters.values())
