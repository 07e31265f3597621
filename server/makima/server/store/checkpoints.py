"""Checkpoints and conversation snapshots of a task, listed newest first by keyset; always scoped by owner."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.models import ConversationSnapshot, TaskCheckpoint

NewestKey = tuple[datetime, uuid.UUID]


async def _newest_first(
    session: AsyncSession,
    table: Table,
    *,
    owner_id: uuid.UUID,
    task_id: uuid.UUID,
    before: NewestKey | None,
    limit: int,
) -> list[Row[Any]]:
    stmt = select(table).where(table.c.owner_id == owner_id, table.c.task_id == task_id)
    if before is not None:
        time, row_id = before
        stmt = stmt.where(or_(table.c.create_time < time, and_(table.c.create_time == time, table.c.id < row_id)))
    stmt = stmt.order_by(table.c.create_time.desc(), table.c.id.desc()).limit(limit)
    return list((await session.execute(stmt)).all())


async def checkpoint_page(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, before: NewestKey | None, limit: int
) -> list[Row[Any]]:
    return await _newest_first(
        session, TaskCheckpoint.__table__, owner_id=owner_id, task_id=task_id, before=before, limit=limit
    )


async def snapshot_page(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, before: NewestKey | None, limit: int
) -> list[Row[Any]]:
    return await _newest_first(
        session, ConversationSnapshot.__table__, owner_id=owner_id, task_id=task_id, before=before, limit=limit
    )


async def get_snapshot(
    session: AsyncSession, *, owner_id: uuid.UUID, snapshot_id: uuid.UUID
) -> ConversationSnapshot | None:
    return (
        await session.execute(
            select(ConversationSnapshot).where(
                ConversationSnapshot.id == snapshot_id, ConversationSnapshot.owner_id == owner_id
            )
        )
    ).scalar_one_or_none()


async def get_checkpoint(
    session: AsyncSession, *, owner_id: uuid.UUID, checkpoint_id: uuid.UUID
) -> TaskCheckpoint | None:
    return (
        await session.execute(
            select(TaskCheckpoint).where(TaskCheckpoint.id == checkpoint_id, TaskCheckpoint.owner_id == owner_id)
        )
    ).scalar_one_or_none()


async def newest_at_or_before(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    task_id: uuid.UUID,
    message_count: int,
    excluded_kinds: Collection[str] = (),
) -> TaskCheckpoint | None:
    """The newest checkpoint of a task taken when its conversation had at most `message_count` messages,
    of none of the `excluded_kinds`."""
    stmt = (
        select(TaskCheckpoint)
        .where(
            TaskCheckpoint.owner_id == owner_id,
            TaskCheckpoint.task_id == task_id,
            TaskCheckpoint.message_count <= message_count,
            TaskCheckpoint.kind.not_in(excluded_kinds),
        )
        .order_by(TaskCheckpoint.create_time.desc(), TaskCheckpoint.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()
