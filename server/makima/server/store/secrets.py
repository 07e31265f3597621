"""Server-wide secrets (rows of `server_secrets`): not owner data, shared by every server process."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.engine import dialect_of
from makima.server.store.models import ServerSecret

# Any fixed number, distinct from the migration lock: serializes creators and rotators of secrets.
_SECRETS_LOCK = 0x6D6B5F736563


async def lock(session: AsyncSession) -> None:
    """Hold the secrets lock until the transaction ends, so concurrent starts create one key, not several.

    On PostgreSQL an advisory transaction lock; on SQLite a write transaction already holds the
    database lock from its first statement (BEGIN IMMEDIATE, see store.engine).
    """
    if dialect_of(session) == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SECRETS_LOCK})


async def of_purpose(session: AsyncSession, *, purpose: str) -> list[ServerSecret]:
    """Every secret of a purpose, oldest first (the last one is the newest)."""
    stmt = (
        select(ServerSecret)
        .where(col(ServerSecret.purpose) == purpose)
        .order_by(col(ServerSecret.create_time), col(ServerSecret.id))
    )
    return list((await session.execute(stmt)).scalars())


async def add(session: AsyncSession, *, purpose: str, secret: bytes, now: datetime) -> ServerSecret:
    row = ServerSecret(purpose=purpose, secret=secret, create_time=now)
    session.add(row)
    await session.flush()
    return row


async def remove(session: AsyncSession, *, purpose: str, ids: Collection[uuid.UUID]) -> int:
    """Delete the listed secrets of a purpose; returns how many were deleted."""
    if not ids:
        return 0
    result = await session.execute(
        delete(ServerSecret).where(col(ServerSecret.purpose) == purpose, col(ServerSecret.id).in_(ids))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]  # a DML statement returns a CursorResult, typed Result
