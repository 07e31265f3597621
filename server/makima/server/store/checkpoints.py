"""Checkpoints and conversation snapshots of a task, listed newest first by keyset; always scoped by owner."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.models import ConversationSnapshot, TaskCheckpoint

NewestKey = tuple[datetime, uuid.UUID]
Record = TypeVar("Record", TaskCheckpoint, ConversationSnapshot)


def newest_first(
    stmt: Select[Any], create_time: Any, row_id: Any, *, before: NewestKey | None, limit: int
) -> Select[Any]:
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
    stmt = select(model).where(model.owner_id == owner_id, model.task_id == task_id)
    return list(
        (await session.execute(newest_first(stmt, model.create_time, model.id, before=before, limit=limit))).scalars()
    )


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
