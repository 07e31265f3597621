"""Task queries, always scoped by owner."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.checkpoints import NewestKey, newest_first
from makima.server.store.models import Task

# Built once: building a statement and its cache key on every call cost more CPU than running it.
_GET = select(Task).where(col(Task.id) == bindparam("task_id"), col(Task.owner_id) == bindparam("owner_id"))
_GET_FOR_UPDATE = _GET.with_for_update()


async def get(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, for_update: bool = False
) -> Task | None:
    stmt = _GET_FOR_UPDATE if for_update else _GET
    return (await session.execute(stmt, {"task_id": task_id, "owner_id": owner_id})).scalar_one_or_none()


async def related(session: AsyncSession, *, owner_id: uuid.UUID, task_ids: set[uuid.UUID]) -> list[Task]:
    """Tasks forked from, continuing, or spawned by any of `task_ids`."""
    if not task_ids:
        return []
    stmt = select(Task).where(
        col(Task.owner_id) == owner_id,
        or_(
            col(Task.forked_from_task_id).in_(task_ids),
            col(Task.continued_from_task_id).in_(task_ids),
            col(Task.parent_task_id).in_(task_ids),
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
    stmt = select(Task).where(col(Task.owner_id) == owner_id)
    if contract_id is not None:
        stmt = stmt.where(col(Task.contract_id) == contract_id)
    if statuses:
        stmt = stmt.where(col(Task.status).in_(statuses))
    return list(
        (
            await session.execute(newest_first(stmt, col(Task.create_time), col(Task.id), before=before, limit=limit))
        ).scalars()
    )
