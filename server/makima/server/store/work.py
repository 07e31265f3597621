"""Queries of the daemon work loop: daemons, the claim queue and task leases, always scoped by owner.

Exclusive hand-out rests on row locks: on PostgreSQL a claimer or sweeper locks its rows with
`FOR UPDATE SKIP LOCKED`, so concurrent callers take different rows instead of queueing on one; on
SQLite every write transaction starts with BEGIN IMMEDIATE (see store.engine), so a read followed by
an update in one write transaction sees no concurrent writer and the lock clause is simply dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.models import Contract, Daemon, Task, table_of

_PENDING = "pending"
_RUNNING = "running"


async def get_daemon(session: AsyncSession, *, owner_id: uuid.UUID, daemon_id: uuid.UUID) -> Daemon | None:
    stmt = select(Daemon).where(col(Daemon.id) == daemon_id, col(Daemon.owner_id) == owner_id)
    return (await session.execute(stmt)).scalar_one_or_none()


def _pending(owner_id: uuid.UUID, kinds: Collection[str]) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [col(Task.owner_id) == owner_id, col(Task.status) == _PENDING]
    if kinds:
        where.append(col(Task.kind).in_(kinds))
    return where


async def has_pending(session: AsyncSession, *, owner_id: uuid.UUID, kinds: Collection[str]) -> bool:
    """Whether a claim could succeed: lets idle claimers poll without opening a write transaction."""
    return bool((await session.execute(select(exists().where(*_pending(owner_id, kinds))))).scalar())


async def lock_next_pending(session: AsyncSession, *, owner_id: uuid.UUID, kinds: Collection[str]) -> Task | None:
    """The owner's oldest pending task that no other transaction holds, locked until commit."""
    stmt = (
        select(Task)
        .where(*_pending(owner_id, kinds))
        .order_by(col(Task.create_time), col(Task.id))
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def extend_leases(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    daemon_id: uuid.UUID,
    task_ids: Collection[uuid.UUID],
    now: datetime,
    until: datetime,
) -> set[uuid.UUID]:
    """Move the lease end of the listed tasks whose unexpired lease this daemon holds; returns their ids."""
    if not task_ids:
        return set()
    t = table_of(Task)
    result = await session.execute(
        update(t)
        .where(
            t.c.owner_id == owner_id,
            t.c.daemon_id == daemon_id,
            t.c.status == _RUNNING,
            t.c.lease_expire_time > now,
            t.c.id.in_(task_ids),
        )
        .values(lease_expire_time=until)
        .returning(t.c.id)
    )
    return set(result.scalars())


async def owners_with_expired_leases(session: AsyncSession, *, now: datetime, limit: int) -> list[uuid.UUID]:
    """Owners having a running task whose lease ended before `now` (any owner: for the sweeper)."""
    stmt = (
        select(col(Task.owner_id))
        .where(col(Task.status) == _RUNNING, col(Task.lease_expire_time) < now)
        .distinct()
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def lock_expired(session: AsyncSession, *, owner_id: uuid.UUID, now: datetime, limit: int) -> list[Task]:
    """Up to `limit` of the owner's running tasks whose lease ended, locked; rows held elsewhere are skipped.

    PostgreSQL re-checks the condition on the newest row version after locking, so a lease extended by
    a heartbeat that committed meanwhile is not taken.
    """
    stmt = (
        select(Task)
        .where(col(Task.owner_id) == owner_id, col(Task.status) == _RUNNING, col(Task.lease_expire_time) < now)
        .order_by(col(Task.lease_expire_time), col(Task.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(stmt)).scalars())


async def contract_phases(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The current phase of each listed contract, in one query."""
    if not contract_ids:
        return {}
    stmt = select(col(Contract.id), col(Contract.phase)).where(
        col(Contract.owner_id) == owner_id, col(Contract.id).in_(contract_ids)
    )
    return {row.id: row.phase for row in (await session.execute(stmt)).all()}


async def count_pending(session: AsyncSession) -> int:
    """Pending tasks of every owner: the queue that daemons drain (a metric, not a per-owner view)."""
    return int((await session.execute(select(func.count()).where(col(Task.status) == _PENDING))).scalar_one())
