"""Task events: idempotent set-based ingest (by per-task sequence) and keyset reads."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.engine import dialect_of
from makima.server.store.filters import AT_OR_AFTER, BEFORE, IS_IN, Filter, Predicate
from makima.server.store.models import Task, TaskEvent, table_of
from makima.server.store.types import json_text

_table = table_of(TaskEvent)
_tasks = table_of(Task)


@dataclass(frozen=True, slots=True)
class EventRow:
    """A task event to store; owner, task and record time are the batch's."""

    sequence: int
    kind: str
    text: str
    data: dict[str, Any] | None
    event_time: datetime


@dataclass(frozen=True)
class Stored:
    """What a batch stored, and the task's event counters after it."""

    sequences: list[int]
    event_count: int
    last_sequence: int


# One statement and one round trip for a whole batch: the rows travel as one array per column
# (asyncpg encodes them in C, no per-row parameter processing), and the same statement updates the
# task's counters (and its last activity when anything was new).
_PG_INSERT_NEW = text(
    """
    WITH new AS (
        INSERT INTO task_events (owner_id, task_id, sequence, kind, text, data, event_time, record_time)
        SELECT CAST(:owner_id AS UUID), CAST(:task_id AS UUID), u.sequence, u.kind, u.text,
               CAST(u.data AS JSONB), u.event_time, CAST(:now AS TIMESTAMPTZ)
        FROM unnest(CAST(:sequences AS BIGINT[]), CAST(:kinds AS TEXT[]), CAST(:texts AS TEXT[]),
                    CAST(:datas AS TEXT[]), CAST(:event_times AS TIMESTAMPTZ[]))
             AS u(sequence, kind, text, data, event_time)
        ON CONFLICT (task_id, sequence) DO NOTHING
        RETURNING sequence
    ), counted AS (
        UPDATE tasks SET
            event_count = event_count + (SELECT count(*) FROM new),
            last_event_sequence = GREATEST(last_event_sequence, COALESCE((SELECT max(sequence) FROM new), 0)),
            last_activity_time = CASE WHEN EXISTS (SELECT 1 FROM new) THEN CAST(:now AS TIMESTAMPTZ)
                                      ELSE last_activity_time END
        WHERE id = CAST(:task_id AS UUID) AND owner_id = CAST(:owner_id AS UUID)
        RETURNING event_count, last_event_sequence
    )
    SELECT (SELECT array_agg(sequence) FROM new), event_count, last_event_sequence FROM counted
    """
)


async def insert_new(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, rows: Sequence[EventRow], now: datetime
) -> Stored:
    """Insert events, skipping sequences the task already has, and count them on the task.

    When any is stored, the task's last activity time becomes `now`.
    """
    if dialect_of(session) == "postgresql":
        params = {
            "owner_id": owner_id,
            "task_id": task_id,
            "now": now,
            "sequences": [r.sequence for r in rows],
            "kinds": [r.kind for r in rows],
            "texts": [r.text for r in rows],
            "datas": [json_text(r.data) for r in rows],
            "event_times": [r.event_time for r in rows],
        }
        new, count, last = (await session.execute(_PG_INSERT_NEW, params)).one()
        return Stored(sequences=[int(s) for s in new or ()], event_count=int(count), last_sequence=int(last))
    stmt = (
        sqlite.insert(_table)
        .on_conflict_do_nothing(index_elements=[_table.c.task_id, _table.c.sequence])
        .returning(_table.c.sequence)
    )
    values = [
        {
            "owner_id": owner_id,
            "task_id": task_id,
            "sequence": r.sequence,
            "kind": r.kind,
            "text": r.text,
            "data": r.data,
            "event_time": r.event_time,
            "record_time": now,
        }
        for r in rows
    ]
    stored = [int(s) for s in (await session.execute(stmt, values)).scalars()] if values else []
    counters: dict[str, Any] = {
        "event_count": _tasks.c.event_count + len(stored),
        "last_event_sequence": func.max(_tasks.c.last_event_sequence, max(stored, default=0)),
    }
    if stored:
        counters["last_activity_time"] = now
    count, last = (
        await session.execute(
            update(_tasks)
            .where(_tasks.c.id == task_id, _tasks.c.owner_id == owner_id)
            .values(**counters)
            .returning(_tasks.c.event_count, _tasks.c.last_event_sequence)
        )
    ).one()
    return Stored(sequences=stored, event_count=int(count), last_sequence=int(last))


async def contents(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, sequences: Collection[int]
) -> list[EventRow]:
    """The stored content of the listed events of a task, in sequence order: to compare resends with."""
    if not sequences:
        return []
    c = _table.c
    stmt = (
        select(c.sequence, c.kind, c.text, c.data, c.event_time)
        .where(c.owner_id == owner_id, c.task_id == task_id, c.sequence.in_(sequences))
        .order_by(c.sequence)
    )
    return [EventRow(*row) for row in await session.execute(stmt)]


async def last_sequence(session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID) -> int:
    """The highest sequence stored for a task (0 for none), from its counter."""
    result = await session.execute(
        select(_tasks.c.last_event_sequence).where(_tasks.c.owner_id == owner_id, _tasks.c.id == task_id)
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


@dataclass(frozen=True)
class TaskEventFilter(Filter):
    """Which events of a task a page wants (all fields optional)."""

    PREDICATES: ClassVar[tuple[Predicate, ...]] = (
        Predicate("kinds", "kind", IS_IN),
        Predicate("start_time", "event_time", AT_OR_AFTER),
        Predicate("end_time", "event_time", BEFORE),
    )

    kinds: tuple[str, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None


class StoredTaskEvent(NamedTuple):
    """A task event as stored: what the daemon sent, and when the service recorded it."""

    task_id: uuid.UUID
    sequence: int
    kind: str
    text: str
    data: dict[str, Any] | None
    event_time: datetime
    record_time: datetime


_c = _table.c
_STORED_EVENT = (_c.task_id, _c.sequence, _c.kind, _c.text, _c.data, _c.event_time, _c.record_time)


async def page(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    task_id: uuid.UUID,
    after: int,
    limit: int,
    where: TaskEventFilter,
) -> list[StoredTaskEvent]:
    """Events with sequence > after, in sequence order (keyset page)."""
    stmt = select(*_STORED_EVENT).where(_c.owner_id == owner_id, _c.task_id == task_id, _c.sequence > after)
    stmt = stmt.where(*where.clauses(_table))
    return list(map(StoredTaskEvent._make, await session.execute(stmt.order_by(_c.sequence).limit(limit))))
