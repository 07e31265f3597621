"""Garbage collection of the owners' object stores, in the background of every server process.

Objects are stored before the rows that name them commit (domain.worktrees), so a failed transaction
or a refused push leaves packs nothing names. The collector removes them: for an owner, the roots
are the commit of every checkpoint and the head of every task; packs younger than the grace period
are kept with everything they reach, since a push or a use case in flight has stored them and not
yet committed its rows. The grace must exceed the longest such call; a day is far beyond it.

Every process runs a collector. On PostgreSQL an owner is collected under an advisory lock taken in
the transaction that reads its roots, so two processes never collect one owner at once; the
embedded SQLite setup is one process. Each round takes at most `OWNERS_PER_ROUND` owners, the next
round going on after the last, so a round's work is bounded however many owners there are.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from makima.server.domain.objects import ObjectStores
from makima.server.domain.periodic import Periodic
from makima.server.domain.runtime import Runtime
from makima.server.git.objects import GarbageCollection
from makima.server.store import commits

log = logging.getLogger(__name__)

GC_INTERVAL_SECONDS = 3600.0
GC_GRACE = timedelta(days=1)
OWNERS_PER_ROUND = 20
_LOCK_PURPOSE = "object-gc"


class ObjectCollector(Periodic):
    """A background task collecting garbage in the object stores every `interval` seconds until stopped."""

    name = "makima-object-collector"
    delay_first = True

    def __init__(self, rt: Runtime, objects: ObjectStores, *, interval: float, grace: timedelta) -> None:
        super().__init__(interval=interval)
        self.rt = rt
        self.objects = objects
        self.grace = grace
        self._after: uuid.UUID | None = None

    async def collect_round(self) -> int:
        """Collect the next owners (at most OWNERS_PER_ROUND); returns how many packs were removed."""
        async with self.rt.read() as session:
            owners = await commits.owners_with_code(session, after=self._after, limit=OWNERS_PER_ROUND)
        self._after = owners[-1] if len(owners) == OWNERS_PER_ROUND else None
        removed = 0
        for owner_id in owners:
            done = await self.collect(owner_id)
            removed += len(done.removed) if done else 0
        return removed

    async def collect(self, owner_id: uuid.UUID, *, grace: timedelta | None = None) -> GarbageCollection | None:
        """Collect one owner's store now; None when another process is collecting it."""
        async with self.rt.read(holds_locks=True) as session:
            if not await commits.try_lock_owner(session, owner_id=owner_id, purpose=_LOCK_PURPOSE):
                return None
            roots = await commits.commit_roots(session, owner_id=owner_id)
            keep = self.grace if grace is None else grace
            # The lock is the transaction's: it is held while the store works in its thread.
            return await self.objects.run(owner_id, lambda store: store.collect_garbage(roots, grace=keep))

    async def run_once(self) -> None:
        if removed := await self.collect_round():
            log.info("removed unreferenced packs from the object stores", extra={"count": removed})
