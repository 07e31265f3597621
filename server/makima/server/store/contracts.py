"""Contract and supervisor-state queries, always scoped by owner."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.checkpoints import NewestKey, newest_first
from makima.server.store.models import Contract, SupervisorState

# Built once: building a statement and its cache key on every call cost more CPU than running it.
_BY_ID = (col(Contract.id) == bindparam("contract_id")) & (col(Contract.owner_id) == bindparam("owner_id"))
_GET = select(Contract).where(_BY_ID)
_GET_FOR_UPDATE = _GET.with_for_update()
_GET_WITH_SUPERVISOR = (
    select(Contract, col(SupervisorState.task_id))
    .outerjoin(
        SupervisorState,
        (col(SupervisorState.contract_id) == col(Contract.id))
        & (col(SupervisorState.owner_id) == col(Contract.owner_id)),
    )
    .where(_BY_ID)
)


async def get(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_id: uuid.UUID, for_update: bool = False
) -> Contract | None:
    stmt = _GET_FOR_UPDATE if for_update else _GET
    return (await session.execute(stmt, {"contract_id": contract_id, "owner_id": owner_id})).scalar_one_or_none()


async def get_with_supervisor(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_id: uuid.UUID
) -> tuple[Contract, uuid.UUID | None] | None:
    """The contract and the id of its supervisor task (None until started), in one statement."""
    params = {"contract_id": contract_id, "owner_id": owner_id}
    row = (await session.execute(_GET_WITH_SUPERVISOR, params)).one_or_none()
    return None if row is None else (row[0], row[1])


async def supervisor_state(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_id: uuid.UUID
) -> SupervisorState | None:
    return (
        await session.execute(
            select(SupervisorState).where(
                col(SupervisorState.contract_id) == contract_id, col(SupervisorState.owner_id) == owner_id
            )
        )
    ).scalar_one_or_none()


async def page(
    session: AsyncSession, *, owner_id: uuid.UUID, statuses: tuple[str, ...], before: NewestKey | None, limit: int
) -> list[Contract]:
    """The owner's contracts newest first, by (create_time, id) keyset, optionally in some statuses."""
    stmt = select(Contract).where(col(Contract.owner_id) == owner_id)
    if statuses:
        stmt = stmt.where(col(Contract.status).in_(statuses))
    return list(
        (
            await session.execute(
                newest_first(stmt, col(Contract.create_time), col(Contract.id), before=before, limit=limit)
            )
        ).scalars()
    )


async def supervisor_tasks(
    session: AsyncSession, *, owner_id: uuid.UUID, contract_ids: list[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """The supervisor task of each of `contract_ids` that has one, in one query."""
    if not contract_ids:
        return {}
    rows = await session.execute(
        select(col(SupervisorState.contract_id), col(SupervisorState.task_id)).where(
            col(SupervisorState.owner_id) == owner_id,
            col(SupervisorState.contract_id).in_(contract_ids),
        )
    )
    return {contract_id: task_id for contract_id, task_id in rows.all() if task_id is not None}
