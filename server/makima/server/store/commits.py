"""What garbage collection of the object stores reads: the commits an owner's records name, and
which owners have code. Scoped by owner, except the listing of owners (for the collector)."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import select, text, union
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.engine import dialect_of
from makima.server.store.models import Task, TaskCheckpoint


async def commit_roots(session: AsyncSession, *, owner_id: uuid.UUID) -> list[str]:
    """Every commit the owner's records name: each checkpoint's, and each task's head."""
    stmt = union(
        select(TaskCheckpoint.commit_sha).where(TaskCheckpoint.owner_id == owner_id),
        select(Task.head_commit_sha).where(Task.owner_id == owner_id, Task.head_commit_sha.is_not(None)),
    )
    return [sha for sha in (await session.execute(stmt)).scalars() if sha]


async def owners_with_code(session: AsyncSession, *, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
    """Up to `limit` owners having a task with a worktree, in id order after `after` (any owner: for the collector)."""
    stmt = select(Task.owner_id).where(Task.placement.is_not(None)).distinct().order_by(Task.owner_id).limit(limit)
    if after is not None:
        stmt = stmt.where(Task.owner_id > after)
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
