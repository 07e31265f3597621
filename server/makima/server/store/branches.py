"""Branches of daemon-held tasks on the records (CreateBranch); always scoped by owner."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.models import TaskBranch


async def branches_of(session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID) -> list[TaskBranch]:
    """The task's recorded branches, oldest first."""
    stmt = (
        select(TaskBranch)
        .where(col(TaskBranch.owner_id) == owner_id, col(TaskBranch.task_id) == task_id)
        .order_by(col(TaskBranch.create_time), col(TaskBranch.name))
    )
    return list((await session.execute(stmt)).scalars())


async def get_branch(session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, name: str) -> TaskBranch | None:
    stmt = select(TaskBranch).where(
        col(TaskBranch.owner_id) == owner_id, col(TaskBranch.task_id) == task_id, col(TaskBranch.name) == name
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def add_branch(session: AsyncSession, branch: TaskBranch) -> None:
    session.add(branch)
