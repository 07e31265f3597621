"""Timeline writes: per-owner cursor allocation and set-based insert of history events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.engine import dialect_of
from makima.server.store.filters import AT_OR_AFTER, BEFORE, EQUALS, IS_IN, Filter, Predicate
from makima.server.store.models import Contract, HistoryEvent, Owner, table_of
from makima.server.store.types import json_text

NOTIFY_CHANNEL = "makima_timeline"


@dataclass(frozen=True)
class NewHistoryEvent:
    """A timeline event to write; its cursor is allocated at write time."""

    kind: str
    summary: str
    contract_id: uuid.UUID | None = None
    task_id: uuid.UUID | None = None
    phase: str | None = None
    data: dict[str, Any] | None = None


# Cursor allocation, insert and notification in one statement and one round trip on PostgreSQL.
# The events travel as one array per column; `ord` numbers them from 1 in the order given.
_PG_APPEND = text(
    """
    WITH allocated AS (
        UPDATE owners SET timeline_cursor = timeline_cursor + CAST(:count AS BIGINT)
        WHERE id = CAST(:owner_id AS UUID)
        RETURNING timeline_cursor
    ), inserted AS (
        INSERT INTO history_events (owner_id, cursor, kind, contract_id, task_id, phase, summary, data, create_time)
        SELECT CAST(:owner_id AS UUID), a.timeline_cursor - CAST(:count AS BIGINT) + u.ord, u.kind, u.contract_id,
               u.task_id,
               CASE WHEN u.phase IS NULL AND u.contract_id IS NOT NULL
                    THEN (SELECT c.phase FROM contracts c
                          WHERE c.owner_id = CAST(:owner_id AS UUID) AND c.id = u.contract_id)
                    ELSE u.phase END,
               u.summary, CAST(u.data AS JSONB), CAST(:now AS TIMESTAMPTZ)
        FROM allocated a,
             unnest(CAST(:kinds AS TEXT[]), CAST(:contract_ids AS UUID[]), CAST(:task_ids AS UUID[]),
                    CAST(:phases AS TEXT[]), CAST(:summaries AS TEXT[]), CAST(:datas AS TEXT[]))
             WITH ORDINALITY AS u(kind, contract_id, task_id, phase, summary, data, ord)
    )
    SELECT timeline_cursor, pg_notify(:channel, CAST(:owner_id AS TEXT) || ':' || timeline_cursor)
    FROM allocated
    """
)


async def append(
    session: AsyncSession, *, owner_id: uuid.UUID, events: Sequence[NewHistoryEvent], now: datetime
) -> int:
    """Allocate cursors for `events` and insert them; returns the last cursor.

    The cursor comes from an UPDATE of the owner's row, which locks it until the transaction ends:
    writers of one owner commit one after the other, so commit order equals cursor order and a
    reader paging by cursor can never skip a row that commits later (DESIGN.md section 4). Call it
    last in a transaction to hold that lock as briefly as possible.

    An event of a contract that names no phase gets the contract's phase as this transaction sees it,
    so that every event of a contract can be filtered by the phase it happened in.
    """
    if dialect_of(session) == "postgresql":
        # Notified at commit, to every server process listening (see makima.server.timeline).
        params = {
            "owner_id": owner_id,
            "count": len(events),
            "now": now,
            "channel": NOTIFY_CHANNEL,
            "kinds": [e.kind for e in events],
            "contract_ids": [e.contract_id for e in events],
            "task_ids": [e.task_id for e in events],
            "phases": [e.phase for e in events],
            "summaries": [e.summary for e in events],
            "datas": [json_text(e.data) for e in events],
        }
        return int((await session.execute(_PG_APPEND, params)).scalar_one())
    phases = await _contract_phases(
        session, owner_id=owner_id, contract_ids={e.contract_id for e in events if e.phase is None and e.contract_id}
    )
    table = table_of(Owner)
    result = await session.execute(
        update(table)
        .where(table.c.id == owner_id)
        .values(timeline_cursor=table.c.timeline_cursor + len(events))
        .returning(table.c.timeline_cursor)
    )
    last = int(result.scalar_one())
    first = last - len(events) + 1
    await session.execute(
        insert(table_of(HistoryEvent)),
        [
            {
                "owner_id": owner_id,
                "cursor": first + i,
                "kind": e.kind,
                "contract_id": e.contract_id,
                "task_id": e.task_id,
                "phase": e.phase if e.phase is not None or e.contract_id is None else phases.get(e.contract_id),
                "summary": e.summary,
                "data": e.data,
                "create_time": now,
            }
            for i, e in enumerate(events)
        ],
    )
    return last


async def _contract_phases(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_ids: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    if not contract_ids:
        return {}
    contracts = table_of(Contract)
    rows = await session.execute(
        select(contracts.c.id, contracts.c.phase).where(
            contracts.c.owner_id == owner_id, contracts.c.id.in_(contract_ids)
        )
    )
    return {row.id: row.phase for row in rows}


@dataclass(frozen=True)
class TimelineFilter(Filter):
    """Which timeline events a list or stream wants (all fields optional)."""

    PREDICATES: ClassVar[tuple[Predicate, ...]] = (
        Predicate("contract_id", "contract_id", EQUALS),
        Predicate("task_id", "task_id", EQUALS),
        Predicate("kinds", "kind", IS_IN),
        Predicate("phase", "phase", EQUALS),
        Predicate("start_time", "create_time", AT_OR_AFTER),
        Predicate("end_time", "create_time", BEFORE),
    )

    contract_id: uuid.UUID | None = None
    task_id: uuid.UUID | None = None
    kinds: tuple[str, ...] = ()
    phase: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


async def watermark(session: AsyncSession, *, owner_id: uuid.UUID) -> int:
    """The owner's last committed cursor: every event up to it is visible to later statements."""
    table = table_of(Owner)
    result = await session.execute(select(table.c.timeline_cursor).where(table.c.id == owner_id))
    return int(result.scalar_one_or_none() or 0)


class StoredHistoryEvent(NamedTuple):
    """A timeline event as stored, at its cursor."""

    cursor: int
    kind: str
    contract_id: uuid.UUID | None
    task_id: uuid.UUID | None
    phase: str | None
    summary: str
    data: dict[str, Any] | None
    create_time: datetime


class PhaseMove(NamedTuple):
    """An event that moved a contract into `phase` (its creation included)."""

    kind: str
    phase: str | None
    create_time: datetime


_t = table_of(HistoryEvent).c
_STORED_EVENT = (_t.cursor, _t.kind, _t.contract_id, _t.task_id, _t.phase, _t.summary, _t.data, _t.create_time)


async def page(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    where: TimelineFilter,
    after: int,
    limit: int,
    upto: int | None = None,
) -> list[StoredHistoryEvent]:
    """Events with cursor in (after, upto], in cursor order: a keyset page (no OFFSET)."""
    stmt = select(*_STORED_EVENT).where(_t.owner_id == owner_id, _t.cursor > after)
    if upto is not None:
        stmt = stmt.where(_t.cursor <= upto)
    stmt = stmt.where(*where.clauses(table_of(HistoryEvent)))
    return list(map(StoredHistoryEvent._make, await session.execute(stmt.order_by(_t.cursor).limit(limit))))


async def contract_phase_events(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_id: uuid.UUID
) -> list[PhaseMove]:
    """The events that moved a contract between phases (creation included), in order."""
    stmt = (
        select(_t.kind, _t.phase, _t.create_time)
        .where(
            _t.owner_id == owner_id,
            _t.contract_id == contract_id,
            _t.kind.in_(("contract_created", "phase_advanced")),
        )
        .order_by(_t.cursor)
    )
    return list(map(PhaseMove._make, await session.execute(stmt)))
