"""Page tokens that cannot be forged: an HMAC-SHA256 tag under server keys kept in the database.

A page token carries the key of the last item a client saw. Plain base64 JSON let a client edit
that key (a negative position, another cursor) and make a read cover rows it was never given. A
sealed token is

    version (1 byte) | key id (16 bytes) | payload | HMAC-SHA256 tag (32 bytes)

where the tag covers the version, the key id, the token's scope (RPC, owner, filters) and the
payload: a token that was edited, truncated, signed by an unknown key, or replayed on another RPC,
by another owner or with other filters fails the check. The scope itself is not in the token.

The keys are the `server_secrets` rows of purpose "page_token", shared by every server process on
one database. The first start creates one, under a lock so that processes starting together agree
on a single key; `rotate` adds a newer one. Each process holds the keys in memory (no database read
per page): the newest signs, every one verifies. A process reloads them when a token names a key id
it does not know (another process rotated), at most once per `miss_interval` so that made-up key ids
cannot hammer the database, and every `refresh_seconds`, so that a rotation or a removal reaches
every process within that period.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from makima.server.domain.errors import InvalidArgument
from makima.server.domain.runtime import Runtime
from makima.server.store import secrets as secret_store
from makima.server.store.types import utcnow

PURPOSE = "page_token"
_VERSION = b"\x01"
_KEY_ID_BYTES = 16
_HEAD_BYTES = len(_VERSION) + _KEY_ID_BYTES
_TAG_BYTES = hashlib.sha256().digest_size
_SECRET_BYTES = 32


@dataclass(frozen=True)
class TokenScope:
    """What a token is valid for: one RPC, one owner, the same filters (a serialized request)."""

    rpc: str
    owner_id: uuid.UUID
    filters: bytes

    def encoded(self) -> bytes:
        """Each part length-prefixed, so that no two scopes share an encoding."""
        parts = (self.rpc.encode(), self.owner_id.bytes, self.filters)
        return b"".join(len(p).to_bytes(8, "big") + p for p in parts)


def _refused() -> InvalidArgument:
    return InvalidArgument.of("page_token", "is not a token of this list, owner and filters, or was altered")


@dataclass(frozen=True)
class _Ring:
    keys: dict[uuid.UUID, bytes]
    signing: uuid.UUID
    loaded_at: float


@dataclass
class PageTokenKeys:
    """The page-token key ring of one server process: seals and opens tokens."""

    rt: Runtime
    miss_interval: float = 1.0
    refresh_seconds: float = 300.0
    _ring: _Ring | None = field(default=None, init=False)
    _last_miss_reload: float = field(default=float("-inf"), init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def load(self) -> None:
        """Read every key, creating the first one if the database has none (at start-up)."""
        async with self.rt.read() as session:
            rows = await secret_store.of_purpose(session, purpose=PURPOSE)
        if not rows:
            async with self.rt.db.write() as session:
                await secret_store.lock(session)
                rows = await secret_store.of_purpose(session, purpose=PURPOSE)
                if not rows:
                    rows = [await secret_store.add(session, purpose=PURPOSE, secret=_new_secret(), now=utcnow())]
        self._ring = _Ring(keys={row.id: row.secret for row in rows}, signing=rows[-1].id, loaded_at=time.monotonic())

    @property
    def signing_key_id(self) -> uuid.UUID:
        """The id of the key that signs new tokens."""
        assert self._ring is not None, "load() first"
        return self._ring.signing

    async def seal(self, scope: TokenScope, payload: bytes) -> bytes:
        """A token carrying `payload`, valid for `scope` only."""
        ring = await self._current()
        head = _VERSION + ring.signing.bytes
        return head + payload + _tag(ring.keys[ring.signing], head, scope, payload)

    async def open(self, scope: TokenScope, token: bytes) -> bytes:
        """The payload of a token sealed for `scope`; InvalidArgument on `page_token` otherwise."""
        if len(token) < _HEAD_BYTES + _TAG_BYTES or token[: len(_VERSION)] != _VERSION:
            raise _refused()
        head, payload, tag = token[:_HEAD_BYTES], token[_HEAD_BYTES:-_TAG_BYTES], token[-_TAG_BYTES:]
        key_id = uuid.UUID(bytes=head[len(_VERSION) :])
        secret = (await self._current()).keys.get(key_id)
        if secret is None:
            secret = (await self._reload_for(key_id)).keys.get(key_id)
        if secret is None or not hmac.compare_digest(tag, _tag(secret, head, scope, payload)):
            raise _refused()
        return payload

    async def _current(self) -> _Ring:
        ring = self._ring
        assert ring is not None, "load() first"
        if time.monotonic() - ring.loaded_at < self.refresh_seconds:
            return ring
        async with self._lock:
            if self._ring is ring:
                await self.load()
        assert self._ring is not None
        return self._ring

    async def _reload_for(self, key_id: uuid.UUID) -> _Ring:
        """Reload once for a key id this process does not know, unless it reloaded for one just now."""
        async with self._lock:
            assert self._ring is not None
            if key_id not in self._ring.keys and time.monotonic() - self._last_miss_reload >= self.miss_interval:
                self._last_miss_reload = time.monotonic()
                await self.load()
            return self._ring


def _tag(secret: bytes, head: bytes, scope: TokenScope, payload: bytes) -> bytes:
    return hmac.new(secret, head + scope.encoded() + payload, hashlib.sha256).digest()


def _new_secret() -> bytes:
    return secrets.token_bytes(_SECRET_BYTES)


@dataclass(frozen=True)
class Rotation:
    """Outcome of a rotation: the new signing key and how many keys were removed."""

    key_id: uuid.UUID
    removed: int
    remaining: int


async def rotate(rt: Runtime, *, keep: int | None = None) -> Rotation:
    """Add a key that becomes the newest (so it signs); with `keep`, remove all but the newest `keep`.

    Tokens signed by a removed key stop working; running processes notice within `refresh_seconds`.
    """
    if keep is not None and keep < 1:
        raise InvalidArgument.of("keep", "must be at least 1: the new key is always kept")
    async with rt.db.write() as session:
        await secret_store.lock(session)
        rows = await secret_store.of_purpose(session, purpose=PURPOSE)
        now = utcnow()
        if rows and rows[-1].create_time >= now:
            # Another machine's clock is ahead: the new key must still sort newest.
            now = rows[-1].create_time + timedelta(microseconds=1)
        added = await secret_store.add(session, purpose=PURPOSE, secret=_new_secret(), now=now)
        rows.append(added)
        stale = rows[:-keep] if keep is not None else []
        removed = await secret_store.remove(session, purpose=PURPOSE, ids=[row.id for row in stale])
    return Rotation(key_id=added.id, removed=removed, remaining=len(rows) - removed)
