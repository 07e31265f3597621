"""What metrics sample rather than count: the pending-task queue and the database pool."""

from __future__ import annotations

from sqlalchemy.pool import QueuePool

from makima.server.domain.periodic import Periodic
from makima.server.domain.runtime import Runtime
from makima.server.store import work
from makima.server.telemetry import Metrics


class MetricsSampler(Periodic):
    """Every `interval` seconds while metrics are on: one count of pending tasks, and the pool's use."""

    name = "makima-metrics-sampler"

    def __init__(self, rt: Runtime, metrics: Metrics, *, interval: float) -> None:
        super().__init__(interval=interval)
        self.rt = rt
        self.metrics = metrics

    async def run_once(self) -> None:
        async with self.rt.read() as session:
            self.metrics.pending.set(await work.count_pending(session))
        pool = self.rt.db.engine.pool
        if isinstance(pool, QueuePool):
            self.metrics.pool_in_use.set(pool.checkedout())
            self.metrics.pool_size.set(pool.size())
