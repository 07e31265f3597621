"""Rows of `object_packs`: the packs of each owner's git object store on PostgreSQL.

Every query is filtered by owner. A pack is immutable and named by its content, so a put of a name
already stored keeps the first row (ON CONFLICT DO NOTHING) and reading never needs a lock.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.engine import dialect_of
from makima.server.store.models import ObjectPack, table_of

_table = table_of(ObjectPack)
_c = _table.c


class PackRow(NamedTuple):
    """A stored pack without its bytes."""

    name: str
    object_count: int
    byte_size: int
    create_time: datetime


async def list_packs(session: AsyncSession, *, owner_id: uuid.UUID) -> list[PackRow]:
    """Every pack of the owner, without their bytes."""
    stmt = select(_c.name, _c.object_count, _c.byte_size, _c.create_time).where(_c.owner_id == owner_id)
    return list(map(PackRow._make, await session.execute(stmt)))


async def get_pack(session: AsyncSession, *, owner_id: uuid.UUID, name: str) -> tuple[bytes, bytes] | None:
    """The pack's data and index, or None if the owner has no such pack."""
    stmt = select(_c.pack, _c.pack_index).where(_c.owner_id == owner_id, _c.name == name)
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (bytes(row.pack), bytes(row.pack_index))


async def put_pack(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    name: str,
    pack: bytes,
    index: bytes,
    object_count: int,
    now: datetime,
) -> bool:
    """Store a pack unless the owner has one of that name already; returns whether it was stored."""
    dialect_insert = postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert
    stmt = (
        dialect_insert(_table)
        .values(
            owner_id=owner_id,
            name=name,
            pack=pack,
            pack_index=index,
            object_count=object_count,
            byte_size=len(pack),
            create_time=now,
        )
        .on_conflict_do_nothing(index_elements=[_c.owner_id, _c.name])
        .returning(_c.name)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def remove_pack(session: AsyncSession, *, owner_id: uuid.UUID, name: str) -> bool:
    """Delete one pack of the owner; returns whether it existed."""
    result = await session.execute(delete(_table).where(_c.owner_id == owner_id, _c.name == name))
    return bool(result.rowcount)  # type: ignore[attr-defined]  # a DML statement returns a CursorResult, typed Result
