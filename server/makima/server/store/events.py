"""Task events: idempotent set-based ingest (by per-task sequence) and keyset reads."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.engine import dialect_of
from makima.server.store.models import TaskEvent

_table = TaskEvent.__table__


async def insert_new(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert events, skipping (task_id, sequence) pairs already stored; returns the stored sequences."""
    dialect_insert = postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert
    stmt = (
        dialect_insert(_table)
        .on_conflict_do_nothing(index_elements=[_table.c.task_id, _table.c.sequence])
        .returning(_table.c.sequence)
    )
    result = await session.execute(stmt, list(rows))
    return [int(s) for s in result.scalars()]


async def contents(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, sequences: Collection[int]
) -> list[Row[Any]]:
    """The stored content of the listed events of a task, in sequence order: to compare resends with."""
    if not sequences:
        return []
    c = _table.c
    stmt = (
        select(c.sequence, c.kind, c.text, c.data, c.event_time)
        .where(c.owner_id == owner_id, c.task_id == task_id, c.sequence.in_(sequences))
        .order_by(c.sequence)
    )
    return list((await session.execute(stmt)).all())


async def last_sequence(session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID) -> int:
    result = await session.execute(
        select(func.max(_table.c.sequence)).where(_table.c.owner_id == owner_id, _table.c.task_id == task_id)
    )
    return int(result.scalar_one_or_none() or 0)


async def gaps(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, limit: int = 100
) -> list[tuple[int, int]]:
    """Runs of missing sequences (from, to) below the highest stored one, oldest first."""
    lag = func.lag(_table.c.sequence, 1, 0).over(order_by=_table.c.sequence)
    steps = (
        select(_table.c.sequence, lag.label("prev"))
        .where(_table.c.owner_id == owner_id, _table.c.task_id == task_id)
        .subquery()
    )
    result = await session.execute(
        select(steps.c.prev + 1, steps.c.sequence - 1)
        .where(steps.c.sequence - steps.c.prev > 1)
        .order_by(steps.c.sequence)
        .limit(limit)
    )
    return [(int(a), int(b)) for a, b in result.all()]


async def page(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    task_id: uuid.UUID,
    after: int,
    limit: int,
    kinds: tuple[str, ...] = (),
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> list[Row[Any]]:
    """Events with sequence > after, in sequence order (keyset page)."""
    stmt = select(_table).where(_table.c.owner_id == owner_id, _table.c.task_id == task_id, _table.c.sequence > after)
    if kinds:
        stmt = stmt.where(_table.c.kind.in_(kinds))
    if start_time is not None:
        stmt = stmt.where(_table.c.event_time >= start_time)
    if end_time is not None:
        stmt = stmt.where(_table.c.event_time < end_time)
    return list((await session.execute(stmt.order_by(_table.c.sequence).limit(limit))).all())
