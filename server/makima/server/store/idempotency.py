"""Stored first answers of mutating calls, keyed by (owner, method, request_id)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.models import IdempotencyKey


async def find(
    session: AsyncSession, *, owner_id: uuid.UUID, method: str, request_id: uuid.UUID
) -> IdempotencyKey | None:
    return (
        await session.execute(
            select(IdempotencyKey).where(
                IdempotencyKey.owner_id == owner_id,
                IdempotencyKey.method == method,
                IdempotencyKey.request_id == request_id,
            )
        )
    ).scalar_one_or_none()


def add(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    method: str,
    request_id: uuid.UUID,
    request_hash: str,
    response: bytes,
    now: datetime,
) -> None:
    session.add(
        IdempotencyKey(
            owner_id=owner_id,
            method=method,
            request_id=request_id,
            request_hash=request_hash,
            response=response,
            create_time=now,
        )
    )
