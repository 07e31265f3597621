"""The transaction runner every use case goes through.

A use case is a coroutine taking its context and one keyword-only input, and returning one named
result. A mutating use case takes a `Tx`: `Runtime.mutate` runs it in exactly one write transaction
together with its timeline events and its idempotency record, so a state change, its timeline entry
and the stored answer to a retried request commit or roll back together. Any other use case (a read,
a long poll, a stream) takes a `Caller`. Both reach what the runtime holds (workspace, object
stores, timeline hub) the same way, so no use case takes them as arguments.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.enums import TimelineKind
from makima.server.domain.errors import DomainError, InvalidArgument, ResourceExhausted, Unavailable
from makima.server.domain.objects import ObjectStores
from makima.server.domain.workspace import Workspace
from makima.server.git.objects import OwnerObjectStore
from makima.server.store import idempotency, timeline
from makima.server.store.engine import Database
from makima.server.store.models import IdempotencyKey
from makima.server.store.types import utcnow
from makima.server.timeline.hub import TimelineHub

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
    Objects put in the owner's object store (`in_store`) need no undo: until a row names them they
    are unreferenced, and garbage collection removes them.
    """

    session: AsyncSession
    owner_id: uuid.UUID
    now: datetime
    stack: AsyncExitStack
    objects: ObjectStores | None = None
    workspace: Workspace | None = None
    events: list[timeline.NewHistoryEvent] = field(default_factory=list)
    undo: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    after_commit: list[Callable[[], Awaitable[object]]] = field(default_factory=list)

    @property
    def ws(self) -> Workspace:
        """The workspace of service-held worktrees (see `Runtime.ws`)."""
        return _required_workspace(self.workspace)

    async def hold(self, lock: asyncio.Lock) -> None:
        """Acquire `lock` until the transaction and its after-commit work are over."""
        await self.stack.enter_async_context(lock)

    async def in_store(self, work: Callable[[OwnerObjectStore], R]) -> R:
        """Run `work` on the owner's object store, in a worker thread (see domain.objects)."""
        if self.objects is None:
            raise RuntimeError("this runtime has no object store")
        return await self.objects.run(self.owner_id, work, consolidate=True)

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


# PostgreSQL SQLSTATEs of a server that cannot serve now (besides class 08, connection exceptions):
# shutting down on request or after a crash, starting or stopping, out of connection slots.
_PG_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "53300"})
_PG_DISK_FULL = "53100"
# "database ... is not currently accepting connections" (ALLOW_CONNECTIONS false) is 55000
# (object_not_in_prerequisite_state): a refusal only when the connection is being opened.
_PG_NOT_ACCEPTING = "55000"
# SQLite primary result codes: the database is locked by another connection or cannot be opened; full.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 14})  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CANTOPEN
_SQLITE_FULL = 13
_DRIVER_PACKAGES = frozenset({"asyncpg", "sqlalchemy", "aiosqlite"})


@asynccontextmanager
async def _database_errors() -> AsyncIterator[None]:
    """Turn a database that cannot serve now into Unavailable (a full one into ResourceExhausted),
    logged once with its cause; every other error passes through unchanged."""
    try:
        yield
    except IntegrityError:
        raise
    except (DBAPIError, PoolTimeoutError, OSError) as exc:
        error = _database_error(exc)
        if error is None:
            raise
        log.warning("%s", error.message, exc_info=exc, extra={"reason": error.reason})
        raise error from exc


def _database_error(exc: BaseException) -> DomainError | None:
    """What a failure of the database means for the caller, judged by exception types and codes."""
    if isinstance(exc, PoolTimeoutError):  # every pooled connection stayed busy
        return Unavailable("the database is unavailable (no free connection), retry later")
    if isinstance(exc, OSError):  # the driver could not reach the server (refused, reset, timed out)
        return Unavailable("the database is unavailable, retry later") if _raised_by_driver(exc) else None
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated:  # SQLAlchemy's own disconnect detection
        return Unavailable("the database is unavailable, retry later")
    for cause in _causes(exc.orig):
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str):
            if sqlstate.startswith("08") or sqlstate in _PG_UNAVAILABLE:
                return Unavailable("the database is unavailable, retry later")
            if sqlstate == _PG_NOT_ACCEPTING and exc.statement is None:
                return Unavailable("the database is not accepting connections, retry later")
            if sqlstate == _PG_DISK_FULL:
                return ResourceExhausted("the database is out of disk space", reason="DATABASE_FULL")
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(code, int):
            if code & 0xFF in _SQLITE_UNAVAILABLE:
                return Unavailable("the database is busy or cannot be opened, retry later")
            if code & 0xFF == _SQLITE_FULL:
                return ResourceExhausted("the database is out of disk space", reason="DATABASE_FULL")
        if isinstance(cause, OSError):
            return Unavailable("the database is unavailable, retry later")
    return None


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from (the driver's error wraps the server's)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def _raised_by_driver(exc: BaseException) -> bool:
    """Whether the database driver raised `exc`, not file work: counting from where it was raised,
    the first frame outside the standard library (asyncio's socket code) is the driver's."""
    modules = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0])
        tb = tb.tb_next
    for module in reversed(modules):
        if module not in sys.stdlib_module_names:
            return module in _DRIVER_PACKAGES
    return False


def _required_workspace(workspace: Workspace | None) -> Workspace:
    if workspace is None:
        raise RuntimeError("this runtime has no workspace")
    return workspace


class Runtime:
    """Shared state of the use cases: the database, the workspace, the object stores and the timeline hub.

    A runtime without a workspace and object stores (a command-line tool's) serves every use case but
    those on code; without a hub, its commits wake no stream and nothing waits for them.
    """

    def __init__(
        self,
        db: Database,
        *,
        objects: ObjectStores | None = None,
        workspace: Workspace | None = None,
        hub: TimelineHub | None = None,
    ) -> None:
        self.db = db
        self.objects = objects
        self.workspace = workspace
        self._hub = hub

    @property
    def ws(self) -> Workspace:
        """The workspace of service-held worktrees; RuntimeError for a runtime without one."""
        return _required_workspace(self.workspace)

    @property
    def hub(self) -> TimelineHub:
        """Where commits are published to streams and waiting claims; RuntimeError for a runtime without one."""
        if self._hub is None:
            raise RuntimeError("this runtime has no timeline hub")
        return self._hub

    @asynccontextmanager
    async def read(self, *, holds_locks: bool = False) -> AsyncIterator[AsyncSession]:
        """A read-only block (see Database.read)."""
        async with _database_errors(), self.db.read(holds_locks=holds_locks) as session:
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
        if last_cursor is not None and self._hub is not None:
            self._hub.publish(principal.owner_id, last_cursor)
        return result

    async def replay(self, principal: Principal, idem: Idempotency[R]) -> R | None:
        """The stored answer of an earlier call with `idem`'s request_id, or None if there was none.

        For a call that must not start its work again when it is a retry (a checkpoint push reads its
        pack only if it is not); `mutate` makes the same check again in its own transaction.
        """
        async with self.read() as session:
            return _stored_answer(
                await idempotency.find(
                    session, owner_id=principal.owner_id, method=idem.method, request_id=idem.request_id
                ),
                idem,
            )

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
                    tx = Tx(
                        session=session,
                        owner_id=principal.owner_id,
                        now=utcnow(),
                        stack=stack,
                        objects=self.objects,
                        workspace=self.workspace,
                    )
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
            answer = _stored_answer(stored, idem)
            if answer is not None:
                return answer, None
        result = await body(tx)
        if idem is not None:
            await idempotency.add(
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


@dataclass(frozen=True)
class Caller:
    """The runtime as one principal uses it: the context of a use case that is not one write
    transaction (a read, a long poll, a stream), scoped to the principal's owner."""

    rt: Runtime
    principal: Principal

    @property
    def owner_id(self) -> uuid.UUID:
        return self.principal.owner_id

    def read(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A read-only block (see Runtime.read)."""
        return self.rt.read()

    async def mutate(self, body: Callable[[Tx], Awaitable[R]]) -> R:
        """Run `body` in one write transaction of the principal (see Runtime.mutate)."""
        return await self.rt.mutate(self.principal, body)


def _stored_answer(stored: IdempotencyKey | None, idem: Idempotency[R]) -> R | None:
    """The answer stored for a request_id, or None; REQUEST_ID_REUSED if it was used for another request."""
    if stored is None:
        return None
    if stored.request_hash != idem.request_hash:
        raise InvalidArgument.of("request_id", "already used for a different request", reason="REQUEST_ID_REUSED")
    return idem.decode(stored.response)
