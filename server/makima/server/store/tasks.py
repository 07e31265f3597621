"""Task queries, always scoped by owner."""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.checkpoints import NewestKey, newest_first
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


async def page(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    contract_id: uuid.UUID | None,
    statuses: tuple[str, ...],
    before: NewestKey | None,
    limit: int,
) -> list[Task]:
    """The owner's tasks newest first, by (create_time, id) keyset, optionally of one contract or in
    some statuses."""
    stmt = select(Task).where(Task.owner_id == owner_id)
    if contract_id is not None:
        stmt = stmt.where(Task.contract_id == contract_id)
    if statuses:
        stmt = stmt.where(Task.status.in_(statuses))  # type: ignore[attr-defined]
    return list(
        (await session.execute(newest_first(stmt, Task.create_time, Task.id, before=before, limit=limit))).scalars()
    )
