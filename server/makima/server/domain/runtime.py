"""The transaction runner every use case goes through.

A mutating use case is a coroutine taking a `Tx`; `Runtime.mutate` runs it in exactly one write
transaction together with its timeline events and its idempotency record, so a state change, its
timeline entry and the stored answer to a retried request commit or roll back together.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.enums import TimelineKind
from makima.server.domain.errors import InvalidArgument, Unavailable
from makima.server.store import idempotency, timeline
from makima.server.store.engine import Database
from makima.server.store.types import utcnow

log = logging.getLogger(__name__)
R = TypeVar("R")


# The api_key_id of the server itself when background work acts for an owner.
SERVER_KEY_ID = uuid.UUID(int=0)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: every query is scoped by its owner."""

    owner_id: uuid.UUID
    api_key_id: uuid.UUID


@dataclass(frozen=True)
class Idempotency(Generic[R]):
    """How to store and replay the answer of a mutating call that carries a request_id.

    The answer is stored as opaque bytes (the api layer's serialized response), so that a retry
    returns exactly the first answer and repeats no effect.
    """

    method: str
    request_id: uuid.UUID
    request_hash: str
    encode: Callable[[R], bytes]
    decode: Callable[[bytes], R]


@dataclass
class Tx:
    """One write transaction of one owner, collecting the timeline events it will commit.

    Work outside the database (git) registers how to undo it if the transaction fails, and what to
    finish once it has committed; `hold` keeps a lock (e.g. a worktree's) until all of that is done.
    """

    session: AsyncSession
    owner_id: uuid.UUID
    now: datetime
    stack: AsyncExitStack
    events: list[timeline.NewHistoryEvent] = field(default_factory=list)
    undo: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    after_commit: list[Callable[[], Awaitable[object]]] = field(default_factory=list)

    async def hold(self, lock: asyncio.Lock) -> None:
        """Acquire `lock` until the transaction and its after-commit work are over."""
        await self.stack.enter_async_context(lock)

    def record(
        self,
        kind: TimelineKind,
        summary: str,
        *,
        contract_id: uuid.UUID | None = None,
        task_id: uuid.UUID | None = None,
        phase: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Add a timeline event, written in this transaction with its cursor."""
        self.events.append(
            timeline.NewHistoryEvent(
                kind=kind.value,
                summary=summary,
                contract_id=contract_id,
                task_id=task_id,
                phase=phase,
                data=data,
            )
        )


def fingerprint(payload: bytes) -> str:
    """Hash of a request, to refuse a request_id reused for a different request."""
    return hashlib.sha256(payload).hexdigest()


@asynccontextmanager
async def _database_errors() -> AsyncIterator[None]:
    """Turn a lost or unreachable database into Unavailable; other errors pass through."""
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        if exc.connection_invalidated or type(exc).__name__ in {"OperationalError", "InterfaceError"}:
            raise Unavailable("the database is unavailable, retry later") from exc
        raise
    except (OSError, ConnectionError) as exc:
        raise Unavailable("the database is unavailable, retry later") from exc


class Runtime:
    """Shared state of the use cases: the database and the timeline publisher."""

    def __init__(self, db: Database, *, on_commit: Callable[[uuid.UUID, int], None] | None = None) -> None:
        self.db = db
        self._on_commit = on_commit

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read transaction."""
        async with _database_errors(), self.db.read() as session:
            yield session

    async def mutate(
        self,
        principal: Principal,
        body: Callable[[Tx], Awaitable[R]],
        idem: Idempotency[R] | None = None,
    ) -> R:
        """Run `body` in one write transaction with its timeline events and idempotency record."""
        try:
            result, last_cursor = await self._attempt(principal, body, idem)
        except IntegrityError:
            # A concurrent call with the same request_id committed first: answer as it did.
            if idem is None:
                raise
            result, last_cursor = await self._attempt(principal, body, idem)
        if last_cursor is not None and self._on_commit is not None:
            self._on_commit(principal.owner_id, last_cursor)
        return result

    async def mutate_for_owner(self, owner_id: uuid.UUID, body: Callable[[Tx], Awaitable[R]]) -> R:
        """Run `body` like `mutate` for an owner with no caller: server background work (the lease sweeper)."""
        return await self.mutate(Principal(owner_id=owner_id, api_key_id=SERVER_KEY_ID), body)

    async def _attempt(
        self, principal: Principal, body: Callable[[Tx], Awaitable[R]], idem: Idempotency[R] | None
    ) -> tuple[R, int | None]:
        async with AsyncExitStack() as stack:
            tx: Tx | None = None
            try:
                async with _database_errors(), self.db.write() as session:
                    tx = Tx(session=session, owner_id=principal.owner_id, now=utcnow(), stack=stack)
                    outcome = await self._run(tx, body, idem)
            except BaseException:
                for undo in reversed(tx.undo if tx is not None else []):
                    try:
                        await undo()
                    except Exception:
                        log.exception("could not undo work of a failed transaction")
                raise
            for finish in tx.after_commit:
                await finish()
            return outcome

    async def _run(
        self, tx: Tx, body: Callable[[Tx], Awaitable[R]], idem: Idempotency[R] | None
    ) -> tuple[R, int | None]:
        """The body with its idempotency record and timeline events, inside the transaction."""
        session = tx.session
        if idem is not None:
            stored = await idempotency.find(
                session, owner_id=tx.owner_id, method=idem.method, request_id=idem.request_id
            )
            if stored is not None:
                if stored.request_hash != idem.request_hash:
                    raise InvalidArgument.of(
                        "request_id",
                        "already used for a different request",
                        reason="REQUEST_ID_REUSED",
                    )
                return idem.decode(stored.response), None
        result = await body(tx)
        if idem is not None:
            idempotency.add(
                session,
                owner_id=tx.owner_id,
                method=idem.method,
                request_id=idem.request_id,
                request_hash=idem.request_hash,
                response=idem.encode(result),
                now=tx.now,
            )
            await session.flush()
        last_cursor = None
        if tx.events:
            last_cursor = await timeline.append(session, owner_id=tx.owner_id, events=tx.events, now=tx.now)
        return result, last_cursor
