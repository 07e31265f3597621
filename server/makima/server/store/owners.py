"""Owners and their hashed API keys."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.models import ApiKey, Owner


async def ensure_owner(session: AsyncSession, *, owner_id: uuid.UUID, name: str = "") -> Owner:
    owner = await session.get(Owner, owner_id)
    if owner is None:
        owner = Owner(id=owner_id, name=name)
        session.add(owner)
        await session.flush()
    return owner


def add_api_key(session: AsyncSession, *, owner_id: uuid.UUID, name: str, key_hash: str, key_prefix: str) -> ApiKey:
    key = ApiKey(owner_id=owner_id, name=name, key_hash=key_hash, key_prefix=key_prefix)
    session.add(key)
    return key


async def find_active_key(session: AsyncSession, *, key_hash: str) -> ApiKey | None:
    return (
        await session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoke_time.is_(None)))
    ).scalar_one_or_none()
