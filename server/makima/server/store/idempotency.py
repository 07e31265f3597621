"""Stored first answers of mutating calls, keyed by (owner, method, request_id)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.models import IdempotencyKey, table_of

# Built once: building a statement and its cache key on every call cost more CPU than running it.
_FIND = select(IdempotencyKey).where(
    col(IdempotencyKey.owner_id) == bindparam("owner_id"),
    col(IdempotencyKey.method) == bindparam("method"),
    col(IdempotencyKey.request_id) == bindparam("request_id"),
)
_ADD = insert(table_of(IdempotencyKey))


async def find(
    session: AsyncSession, *, owner_id: uuid.UUID, method: str, request_id: uuid.UUID
) -> IdempotencyKey | None:
    params = {"owner_id": owner_id, "method": method, "request_id": request_id}
    return (await session.execute(_FIND, params)).scalar_one_or_none()


async def add(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    method: str,
    request_id: uuid.UUID,
    request_hash: str,
    response: bytes,
    now: datetime,
) -> None:
    """Store the first answer (a concurrent call with the same request_id fails here with IntegrityError)."""
    await session.execute(
        _ADD,
        {
            "owner_id": owner_id,
            "method": method,
            "request_id": request_id,
            "request_hash": request_hash,
            "response": response,
            "create_time": now,
        },
    )
