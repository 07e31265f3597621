"""Owners and their hashed API keys."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from makima.server.store.models import ApiKey, Owner


async def ensure_owner(session: AsyncSession, *, owner_id: uuid.UUID, name: str = "") -> Owner:
    owner = await session.get(Owner, owner_id)
    if owner is None:
        owner = Owner(id=owner_id, name=name)
        session.add(owner)
        await session.flush()
    return owner


async def find_owner_by_name(session: AsyncSession, *, name: str) -> Owner | None:
    return (await session.execute(select(Owner).where(col(Owner.name) == name))).scalar_one_or_none()


async def find_owner(session: AsyncSession, *, ref: str) -> Owner | None:
    """The owner named `ref`, else the owner whose id `ref` is."""
    found = await find_owner_by_name(session, name=ref)
    if found is not None:
        return found
    try:
        return await session.get(Owner, uuid.UUID(ref))
    except ValueError:
        return None


def add_api_key(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    name: str,
    key_hash: str,
    key_prefix: str,
    expire_time: datetime | None = None,
) -> ApiKey:
    key = ApiKey(owner_id=owner_id, name=name, key_hash=key_hash, key_prefix=key_prefix, expire_time=expire_time)
    session.add(key)
    return key


async def find_active_key(session: AsyncSession, *, key_hash: str, now: datetime) -> ApiKey | None:
    """The key with this hash if it is neither revoked nor expired at `now`."""
    return (
        await session.execute(
            select(ApiKey).where(
                col(ApiKey.key_hash) == key_hash,
                col(ApiKey.revoke_time).is_(None),
                or_(col(ApiKey.expire_time).is_(None), col(ApiKey.expire_time) > now),
            )
        )
    ).scalar_one_or_none()


async def list_api_keys(session: AsyncSession, *, owner_id: uuid.UUID | None = None) -> Sequence[tuple[ApiKey, Owner]]:
    """Every key (of one owner, if given) with its owner, oldest first."""
    query = select(ApiKey, Owner).join(Owner, col(Owner.id) == col(ApiKey.owner_id))
    if owner_id is not None:
        query = query.where(col(ApiKey.owner_id) == owner_id)
    rows = await session.execute(query.order_by(col(ApiKey.create_time), col(ApiKey.id)))
    return [(key, owner) for key, owner in rows.tuples()]


async def revoke_api_key(session: AsyncSession, *, key_id: uuid.UUID, now: datetime) -> bool:
    """Mark the key revoked at `now` unless it already is; False if no such key exists."""
    key = await session.get(ApiKey, key_id)
    if key is None:
        return False
    await session.execute(
        update(ApiKey).where(col(ApiKey.id) == key_id, col(ApiKey.revoke_time).is_(None)).values(revoke_time=now)
    )
    return True
