"""API keys: created once and shown once, stored as a SHA-256 hash, checked on every call."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from makima.server.domain.errors import Unauthenticated
from makima.server.domain.runtime import Principal, Runtime
from makima.server.store import owners

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


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_api_key(rt: Runtime, *, owner_id: uuid.UUID, name: str = "") -> NewApiKey:
    """Create the owner if needed and a new API key for it."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    async with rt.db.write() as session:
        await owners.ensure_owner(session, owner_id=owner_id)
        key = owners.add_api_key(
            session, owner_id=owner_id, name=name, key_hash=hash_key(secret), key_prefix=secret[:10]
        )
        await session.flush()
        return NewApiKey(key_id=key.id, owner_id=owner_id, secret=secret)


class Authenticator:
    """Resolves an API key to its principal, with a short positive cache."""

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
        async with self._rt.read() as session:
            key = await owners.find_active_key(session, key_hash=digest)
        if key is None:
            self._cache.pop(digest, None)
            raise Unauthenticated("invalid API key", reason="INVALID_API_KEY")
        principal = Principal(owner_id=key.owner_id, api_key_id=key.id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, principal)
        return principal
