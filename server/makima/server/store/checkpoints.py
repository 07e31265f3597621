"""Checkpoints and conversation snapshots of a task, listed newest first by keyset; always scoped by owner."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import TypeVar, TypeVarTuple

from sqlalchemy import Select, SQLColumnExpression, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.models import ConversationSnapshot, TaskCheckpoint

NewestKey = tuple[datetime, uuid.UUID]
Record = TypeVar("Record", TaskCheckpoint, ConversationSnapshot)
_Ts = TypeVarTuple("_Ts")


def newest_first(
    stmt: Select[*_Ts],
    create_time: SQLColumnExpression[datetime],
    row_id: SQLColumnExpression[uuid.UUID],
    *,
    before: NewestKey | None,
    limit: int,
) -> Select[*_Ts]:
    """`stmt` ordered newest first by (create_time, id), from just after the keyset `before`."""
    if before is not None:
        time, last_id = before
        stmt = stmt.where(or_(create_time < time, and_(create_time == time, row_id < last_id)))
    return stmt.order_by(create_time.desc(), row_id.desc()).limit(limit)


async def _newest_first(
    session: AsyncSession,
    model: type[Record],
    *,
    owner_id: uuid.UUID,
    task_id: uuid.UUID,
    before: NewestKey | None,
    limit: int,
) -> list[Record]:
    stmt = select(model).where(col(model.owner_id) == owner_id, col(model.task_id) == task_id)
    page = newest_first(stmt, col(model.create_time), col(model.id), before=before, limit=limit)
    return list((await session.execute(page)).scalars())


async def checkpoint_page(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, before: NewestKey | None, limit: int
) -> list[TaskCheckpoint]:
    return await _newest_first(session, TaskCheckpoint, owner_id=owner_id, task_id=task_id, before=before, limit=limit)


async def snapshot_page(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, before: NewestKey | None, limit: int
) -> list[ConversationSnapshot]:
    return await _newest_first(
        session, ConversationSnapshot, owner_id=owner_id, task_id=task_id, before=before, limit=limit
    )


async def get_snapshot(
    session: AsyncSession, *, owner_id: uuid.UUID, snapshot_id: uuid.UUID
) -> ConversationSnapshot | None:
    return (
        await session.execute(
            select(ConversationSnapshot).where(
                col(ConversationSnapshot.id) == snapshot_id, col(ConversationSnapshot.owner_id) == owner_id
            )
        )
    ).scalar_one_or_none()


async def get_checkpoint(
    session: AsyncSession, *, owner_id: uuid.UUID, checkpoint_id: uuid.UUID
) -> TaskCheckpoint | None:
    return (
        await session.execute(
            select(TaskCheckpoint).where(
                col(TaskCheckpoint.id) == checkpoint_id, col(TaskCheckpoint.owner_id) == owner_id
            )
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
            col(TaskCheckpoint.owner_id) == owner_id,
            col(TaskCheckpoint.task_id) == task_id,
            col(TaskCheckpoint.message_count) <= message_count,
            col(TaskCheckpoint.kind).not_in(excluded_kinds),
        )
        .order_by(col(TaskCheckpoint.create_time).desc(), col(TaskCheckpoint.id).desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()
