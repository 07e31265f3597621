"""The lease sweeper: running tasks whose lease ran out become INTERRUPTED, and so resumable.

Every server process runs one. Each owner's expired tasks are swept in one transaction of that owner
(their timeline events need the owner's cursor); on PostgreSQL the rows are locked with SKIP LOCKED,
so sweepers of several processes share the work instead of doing it twice or waiting on each other.
"""

from __future__ import annotations

import functools
import logging

from makima.server import telemetry
from makima.server.domain import work
from makima.server.domain.periodic import Periodic
from makima.server.domain.runtime import Runtime
from makima.server.store import work as store
from makima.server.store.types import utcnow

log = logging.getLogger(__name__)

# Tasks per owner transaction, and owners per round, so that no transaction grows without bound.
BATCH = 500
OWNERS_PER_ROUND = 100


class LeaseSweeper(Periodic):
    """A background task sweeping expired leases every `interval` seconds until stopped."""

    name = "makima-lease-sweeper"

    def __init__(self, rt: Runtime, *, interval: float) -> None:
        super().__init__(interval=interval)
        self.rt = rt

    async def sweep(self) -> int:
        """One pass over every owner; returns how many tasks it interrupted."""
        swept = 0
        while True:
            async with self.rt.read() as session:
                owners = await store.owners_with_expired_leases(session, now=utcnow(), limit=OWNERS_PER_ROUND)
            interrupt = functools.partial(work.interrupt_expired, limit=BATCH)
            counts = [await self.rt.mutate_for_owner(owner, interrupt) for owner in owners]
            interrupted = sum(counts)
            swept += interrupted
            # Go on only while there may be more and this round made progress: rows that another
            # process holds locked are its to sweep.
            more = len(owners) == OWNERS_PER_ROUND or BATCH in counts
            if not (more and interrupted):
                return swept

    async def run_once(self) -> None:
        if swept := await self.sweep():
            log.info("interrupted tasks whose lease expired", extra={"count": swept})
            if telemetry.METRICS is not None:
                telemetry.METRICS.lease_expiries.inc(swept)
