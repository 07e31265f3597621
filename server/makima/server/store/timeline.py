"""Timeline writes: per-owner cursor allocation and set-based insert of history events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.models import HistoryEvent, Owner


@dataclass(frozen=True)
class NewHistoryEvent:
    """A timeline event to write; its cursor is allocated at write time."""

    kind: str
    summary: str
    contract_id: uuid.UUID | None = None
    task_id: uuid.UUID | None = None
    phase: str | None = None
    data: dict[str, Any] | None = None


async def append(
    session: AsyncSession, *, owner_id: uuid.UUID, events: Sequence[NewHistoryEvent], now: datetime
) -> int:
    """Allocate cursors for `events` and insert them; returns the last cursor.

    The cursor comes from an UPDATE of the owner's row, which locks it until the transaction ends:
    writers of one owner commit one after the other, so commit order equals cursor order and a
    reader paging by cursor can never skip a row that commits later (DESIGN.md section 4). Call it
    last in a transaction to hold that lock as briefly as possible.
    """
    table = Owner.__table__
    result = await session.execute(
        update(table)
        .where(table.c.id == owner_id)
        .values(timeline_cursor=table.c.timeline_cursor + len(events))
        .returning(table.c.timeline_cursor)
    )
    last = int(result.scalar_one())
    first = last - len(events) + 1
    await session.execute(
        insert(HistoryEvent.__table__),
        [
            {
                "owner_id": owner_id,
                "cursor": first + i,
                "kind": e.kind,
                "contract_id": e.contract_id,
                "task_id": e.task_id,
                "phase": e.phase,
                "summary": e.summary,
                "data": e.data,
                "create_time": now,
            }
            for i, e in enumerate(events)
        ],
    )
    return last
