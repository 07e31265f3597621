"""The code of daemon-held worktrees as daemons move it (DESIGN.md section 5): checkpoints pushed
with the objects the service lacks, and the objects a daemon lacks to materialize a commit.

A push is checked before any byte of its pack is read (lease, placement, parent = the task's head),
its pack is verified and stored next, and only then is the checkpoint recorded, in one transaction
that checks the same again under the task's row lock. A push refused after its pack was stored (its
commit's parent is not the one announced, or the task moved meanwhile) leaves unreferenced objects,
which garbage collection removes.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import BinaryIO

from makima.server.domain.enums import CheckpointKind
from makima.server.domain.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from makima.server.domain.runtime import Caller, Tx
from makima.server.domain.tasks import load_task
from makima.server.domain.work import Lease, fence
from makima.server.domain.worktrees import daemon_held, head_of, record_checkpoint
from makima.server.git import commits
from makima.server.git.commits import CommitInfo
from makima.server.git.errors import InvalidPackError
from makima.server.git.objects import DEFAULT_CHUNK_SIZE, OwnerObjectStore
from makima.server.store.models import Task, TaskCheckpoint
from makima.server.store.types import utcnow

# A pack starts with "PACK", its version and its object count: 4 bytes each.
_PACK_HEADER = 12


@dataclass(frozen=True, kw_only=True, slots=True)
class PushInput:
    """A pushed checkpoint as its header announces it."""

    task_id: uuid.UUID
    lease: Lease | None
    commit_sha: str
    parent_commit_sha: str
    message: str
    pack_size: int


@dataclass(frozen=True)
class Received:
    """A pushed pack, verified and stored."""

    commit: CommitInfo
    # Objects of the pack as sent (its header's count), before the store completes a thin pack.
    object_count: int
    received_bytes: int


@dataclass(frozen=True)
class Pushed:
    task: Task
    checkpoint: TaskCheckpoint


def _check_push(task: Task, inp: PushInput, now: datetime) -> None:
    """Refuse a push the task cannot take now: lease, placement, and its parent is the head."""
    fence(task, inp.lease, now)
    if not daemon_held(task):
        if not task.placement:
            raise FailedPrecondition(
                f"task {task.id} has no worktree", reason="NO_WORKTREE", metadata={"task": str(task.id)}
            )
        raise FailedPrecondition(
            f"the worktree of task {task.id} is held by the service: checkpoint it with CreateCheckpoint",
            reason="WORKTREE_ON_SERVICE",
            metadata={"task": str(task.id)},
        )
    head = task.head_commit_sha or ""
    if head != inp.parent_commit_sha:
        raise Aborted(
            f"task {task.id} is at commit {head or '(none)'}, not at the pushed commit's parent "
            f"{inp.parent_commit_sha or '(none)'}: materialize its head and push on top of it",
            reason="CHECKPOINT_CONFLICT",
            metadata={"task": str(task.id), "head_commit_sha": head, "parent_commit_sha": inp.parent_commit_sha},
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceivePushInput:
    push: PushInput
    # The pack as the stream carries it, after the header.
    chunks: AsyncIterator[bytes]


async def receive_push(caller: Caller, inp: ReceivePushInput) -> Received:
    """Check the push as `record_push` will, then verify and store the pack it carries.

    The checks come before the pack is read, so that a refused push stores nothing. The stream is
    then spooled to a temporary file as it arrives, so a slow daemon holds no worker thread (they run
    every git and store call of the process); the store then reads the file in one.
    INVALID_ARGUMENT reason INVALID_PACK for a pack the store refuses (nothing of it is kept), and
    INVALID_ARGUMENT naming the field when the stream does not match its header.
    """
    push, objects = inp.push, caller.rt.objects
    assert objects is not None
    async with caller.read() as session:
        _check_push(await load_task(session, caller.owner_id, push.task_id), push, utcnow())
    with tempfile.TemporaryFile() as spool:
        received = 0
        async for chunk in inp.chunks:
            received += len(chunk)
            if received > push.pack_size:
                raise InvalidArgument.of(
                    "header.pack_size", f"declares {push.pack_size} bytes, the stream carries more"
                )
            await asyncio.to_thread(spool.write, chunk)
        if received != push.pack_size:
            raise InvalidArgument.of(
                "header.pack_size", f"declares {push.pack_size} bytes, the stream carried {received}"
            )
        limits = replace(objects.limits, max_pack_bytes=push.pack_size)

        def receive(store: OwnerObjectStore) -> Received:
            count = 0
            if push.pack_size:
                spool.seek(0)
                count = int.from_bytes(spool.read(_PACK_HEADER)[8:], "big")  # verified by receive_pack
                spool.seek(0)
                store.receive_pack(
                    iter(lambda: spool.read(DEFAULT_CHUNK_SIZE), b""), commit=push.commit_sha, limits=limits
                )
            commit = commits.read_commit(store, push.commit_sha)
            if commit is None:
                raise InvalidPackError(
                    f"commit {push.commit_sha} is not stored and no pack was sent",
                    problem="missing_commit",
                    object=push.commit_sha,
                )
            expected = (push.parent_commit_sha,) if push.parent_commit_sha else ()
            if commit.parent_shas != expected:
                shown = ", ".join(commit.parent_shas) or "none"
                raise InvalidArgument.of(
                    "header.commit_sha",
                    f"has the parents ({shown}), not exactly parent_commit_sha {push.parent_commit_sha!r}",
                )
            return Received(commit=commit, object_count=count, received_bytes=received)

        try:
            return await objects.run(caller.owner_id, receive, consolidate=True)
        except InvalidPackError as exc:
            raise _invalid_pack(exc) from None


def _invalid_pack(exc: InvalidPackError) -> InvalidArgument:
    """A refused pack as the caller's error: what was wrong, with the path, object or limit involved."""
    return InvalidArgument(
        f"the pack was refused ({exc.metadata.get('problem', '')}): {exc.message}",
        reason="INVALID_PACK",
        metadata=dict(exc.metadata),
        violations=[FieldViolation("pack_chunk", exc.message)],
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordPushInput:
    push: PushInput
    received: Received


async def record_push(tx: Tx, inp: RecordPushInput) -> Pushed:
    """Record the pushed commit as the task's newest checkpoint and head, checked again under the row lock."""
    push = inp.push
    task = await load_task(tx.session, tx.owner_id, push.task_id, for_update=True)
    _check_push(task, push, tx.now)
    checkpoint = await record_checkpoint(
        tx, task, inp.received.commit, message=push.message, kind=CheckpointKind.DAEMON
    )
    task.update_time = tx.now
    task.last_activity_time = tx.now
    return Pushed(task=task, checkpoint=checkpoint)


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchInput:
    # The task whose head is wanted when `want_commit_sha` is None.
    task_id: uuid.UUID | None
    want_commit_sha: str | None
    have_commit_shas: tuple[str, ...]


@dataclass(frozen=True)
class Fetched:
    """The pack of what the daemon lacks to materialize `commit`, read out by iterating `chunks`."""

    commit: CommitInfo
    object_count: int
    chunks: AsyncGenerator[bytes, None]


async def fetch_objects(caller: Caller, inp: FetchInput) -> Fetched:
    """The pack of the objects reachable from the wanted commit and not from the haves, from the owner's store.

    The pack is written to a temporary file first (the store is read in a worker thread), then
    streamed from it in chunks of at most DEFAULT_CHUNK_SIZE bytes; the file goes when the
    iteration ends. NOT_FOUND for a commit the owner's store does not hold.
    """
    objects = caller.rt.objects
    assert objects is not None
    want = inp.want_commit_sha
    if inp.task_id is not None:
        async with caller.read() as session:
            task = await load_task(session, caller.owner_id, inp.task_id)
        want = want or head_of(task)
    assert want is not None
    spool = tempfile.TemporaryFile()

    def write(store: OwnerObjectStore) -> tuple[CommitInfo, int]:
        commit = commits.read_commit(store, want)
        if commit is None:
            raise NotFound.resource("commit", want)
        outgoing = store.outgoing_pack(wants=[want], haves=inp.have_commit_shas, chunk_size=DEFAULT_CHUNK_SIZE)
        for chunk in outgoing.chunks:
            spool.write(chunk)
        spool.seek(0)
        return commit, outgoing.object_count

    try:
        commit, count = await objects.run(caller.owner_id, write)
    except BaseException:
        spool.close()
        raise
    return Fetched(commit=commit, object_count=count, chunks=_read_out(spool))


async def _read_out(f: BinaryIO) -> AsyncGenerator[bytes, None]:
    try:
        while chunk := await asyncio.to_thread(f.read, DEFAULT_CHUNK_SIZE):
            yield chunk
    finally:
        f.close()
