"""Contract and supervisor-state queries, always scoped by owner."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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
