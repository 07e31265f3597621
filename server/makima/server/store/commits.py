"""What garbage collection of the object stores reads: the commits an owner's records name, and
which owners have code. Scoped by owner, except the listing of owners (for the collector)."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import select, text, union
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.engine import dialect_of
from makima.server.store.models import Task, TaskCheckpoint, table_of

_tasks = table_of(Task).c
_checkpoints = table_of(TaskCheckpoint).c


async def commit_roots(session: AsyncSession, *, owner_id: uuid.UUID) -> list[str]:
    """Every commit the owner's records name: each checkpoint's, and each task's head."""
    stmt = union(
        select(_checkpoints.commit_sha).where(_checkpoints.owner_id == owner_id),
        select(_tasks.head_commit_sha).where(_tasks.owner_id == owner_id, _tasks.head_commit_sha.is_not(None)),
    )
    return [sha for sha in (await session.execute(stmt)).scalars() if sha]


async def newest_checkpoint_of_commit(
    session: AsyncSession, *, owner_id: uuid.UUID, task_id: uuid.UUID, commit_sha: str
) -> TaskCheckpoint | None:
    """The task's newest checkpoint recording `commit_sha`, if any."""
    stmt = (
        select(TaskCheckpoint)
        .where(
            _checkpoints.owner_id == owner_id, _checkpoints.task_id == task_id, _checkpoints.commit_sha == commit_sha
        )
        .order_by(_checkpoints.create_time.desc(), _checkpoints.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def owners_with_code(session: AsyncSession, *, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
    """Up to `limit` owners having a task with a worktree, in id order after `after` (any owner: for the collector)."""
    stmt = (
        select(_tasks.owner_id).where(_tasks.placement.is_not(None)).distinct().order_by(_tasks.owner_id).limit(limit)
    )
    if after is not None:
        stmt = stmt.where(_tasks.owner_id > after)
    return list((await session.execute(stmt)).scalars())


async def try_lock_owner(session: AsyncSession, *, owner_id: uuid.UUID, purpose: str) -> bool:
    """Take a lock on (purpose, owner) until the transaction ends, if no other transaction holds it.

    A PostgreSQL advisory lock, so that one server process at a time does the owner's `purpose`;
    SQLite serves one process, which orders its own work: always True there.
    """
    if dialect_of(session) != "postgresql":
        return True
    digest = hashlib.sha256(f"{purpose}:{owner_id}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    return bool((await session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key})).scalar())
