"""Contract and supervisor-state queries, always scoped by owner."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.checkpoints import NewestKey, newest_first
from makima.server.store.models import Contract, SupervisorState


async def get(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_id: uuid.UUID, for_update: bool = False
) -> Contract | None:
    stmt = select(Contract).where(Contract.id == contract_id, Contract.owner_id == owner_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def supervisor_state(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_id: uuid.UUID
) -> SupervisorState | None:
    return (
        await session.execute(
            select(SupervisorState).where(
                SupervisorState.contract_id == contract_id, SupervisorState.owner_id == owner_id
            )
        )
    ).scalar_one_or_none()


async def page(
    session: AsyncSession, *, owner_id: uuid.UUID, statuses: tuple[str, ...], before: NewestKey | None, limit: int
) -> list[Contract]:
    """The owner's contracts newest first, by (create_time, id) keyset, optionally in some statuses."""
    stmt = select(Contract).where(Contract.owner_id == owner_id)
    if statuses:
        stmt = stmt.where(Contract.status.in_(statuses))  # type: ignore[attr-defined]
    return list(
        (
            await session.execute(newest_first(stmt, Contract.create_time, Contract.id, before=before, limit=limit))
        ).scalars()
    )


async def supervisor_tasks(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_ids: list[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """The supervisor task of each of `contract_ids` that has one, in one query."""
    if not contract_ids:
        return {}
    rows = await session.execute(
        select(SupervisorState.contract_id, SupervisorState.task_id).where(
            SupervisorState.owner_id == owner_id,
            SupervisorState.contract_id.in_(contract_ids),  # type: ignore[attr-defined]
        )
    )
    return {contract_id: task_id for contract_id, task_id in rows.all() if task_id is not None}
