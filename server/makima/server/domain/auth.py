"""API keys: created once and shown once, stored as a SHA-256 hash, checked on every call.

Operators manage them with `makima-server create-api-key/list-api-keys/revoke-api-key`. A revoked
or expired key is refused by the database lookup; each server process trusts a key it has proven
for at most `CACHE_SECONDS`, so a revocation reaches every worker within that time.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from makima.server.domain.errors import NotFound, Unauthenticated
from makima.server.domain.runtime import Principal, Runtime
from makima.server.store import owners
from makima.server.store.types import utcnow

KEY_PREFIX = "mk_"
# A key proven valid is trusted this long without a database read: the one bound on how long a
# revoked key keeps working, and what spares every call a round trip to check its key.
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class NewApiKey:
    """A freshly created key; `secret` is never stored and cannot be shown again."""

    key_id: uuid.UUID
    owner_id: uuid.UUID
    secret: str


@dataclass(frozen=True)
class ApiKeyInfo:
    """What an operator sees of a key: never its secret, only the prefix that identifies it."""

    key_id: uuid.UUID
    owner_id: uuid.UUID
    owner_name: str
    name: str
    key_prefix: str
    create_time: datetime
    expire_time: datetime | None
    revoke_time: datetime | None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_api_key(
    rt: Runtime,
    *,
    owner_id: uuid.UUID | None = None,
    owner_name: str | None = None,
    name: str = "",
    expire_time: datetime | None = None,
) -> NewApiKey:
    """A new API key for the owner given by id (created if new) or by name (found, else created).

    Two concurrent calls naming the same new owner meet on the unique name: the loser retries and
    finds the winner's owner.
    """
    if (owner_id is None) == (owner_name is None):
        raise ValueError("give exactly one of owner_id and owner_name")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    for attempt in range(2):
        try:
            async with rt.db.write() as session:
                if owner_name is not None:
                    found = await owners.find_owner_by_name(session, name=owner_name)
                    owner = found or await owners.ensure_owner(session, owner_id=uuid.uuid4(), name=owner_name)
                else:
                    assert owner_id is not None
                    owner = await owners.ensure_owner(session, owner_id=owner_id)
                key = owners.add_api_key(
                    session,
                    owner_id=owner.id,
                    name=name,
                    key_hash=hash_key(secret),
                    key_prefix=secret[:10],
                    expire_time=expire_time,
                )
                await session.flush()
                return NewApiKey(key_id=key.id, owner_id=owner.id, secret=secret)
        except IntegrityError:
            if attempt or owner_name is None:
                raise
    raise AssertionError("unreachable")


async def list_api_keys(rt: Runtime, *, owner: str | None = None) -> list[ApiKeyInfo]:
    """Every key, or the keys of one owner given by name or UUID; NotFound for an unknown owner."""
    async with rt.db.read() as session:
        owner_id = None
        if owner is not None:
            found = await owners.find_owner(session, ref=owner)
            if found is None:
                raise NotFound.resource("owner", owner)
            owner_id = found.id
        rows = await owners.list_api_keys(session, owner_id=owner_id)
    return [
        ApiKeyInfo(
            key_id=key.id,
            owner_id=key_owner.id,
            owner_name=key_owner.name,
            name=key.name,
            key_prefix=key.key_prefix,
            create_time=key.create_time,
            expire_time=key.expire_time,
            revoke_time=key.revoke_time,
        )
        for key, key_owner in rows
    ]


async def revoke_api_key(rt: Runtime, *, key_id: uuid.UUID) -> None:
    """Revoke a key (revoking twice keeps the first time); NotFound if there is no such key."""
    async with rt.db.write() as session:
        if not await owners.revoke_api_key(session, key_id=key_id, now=utcnow()):
            raise NotFound.resource("api_key", key_id)


class Authenticator:
    """Resolves an API key to its principal, with a short positive cache (see `CACHE_SECONDS`)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise Unauthenticated("missing API key: send `authorization: Bearer <key>` or `x-api-key`")
        digest = hash_key(secret)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        wall = utcnow()
        async with self._rt.read() as session:
            key = await owners.find_active_key(session, key_hash=digest, now=wall)
        if key is None:
            self._cache.pop(digest, None)
            raise Unauthenticated("invalid API key", reason="INVALID_API_KEY")
        principal = Principal(owner_id=key.owner_id, api_key_id=key.id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        trusted = CACHE_SECONDS
        if key.expire_time is not None:
            trusted = min(trusted, (key.expire_time - wall).total_seconds())
        self._cache[digest] = (now + trusted, principal)
        return principal
