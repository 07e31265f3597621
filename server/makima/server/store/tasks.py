"""Task queries, always scoped by owner."""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.models import Task


async def get(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, for_update: bool = False
) -> Task | None:
    stmt = select(Task).where(Task.id == task_id, Task.owner_id == owner_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def related(session: AsyncSession, *, owner_id: uuid.UUID, task_ids: set[uuid.UUID]) -> list[Task]:
    """Tasks forked from, continuing, or spawned by any of `task_ids`."""
    if not task_ids:
        return []
    stmt = select(Task).where(
        Task.owner_id == owner_id,
        or_(
            Task.forked_from_task_id.in_(task_ids),
            Task.continued_from_task_id.in_(task_ids),
            Task.parent_task_id.in_(task_ids),
        ),
    )
    return list((await session.execute(stmt)).scalars())
