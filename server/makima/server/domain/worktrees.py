"""Git work inside a use case's transaction: worktrees, checkpoints and code rewinds, wherever the
worktree lives (`Task.placement`, DESIGN.md section 5).

A service-held worktree is a repository under the workspace root. Order of operations keeps git and
the database consistent: commits are written as unreferenced objects first (in the worktree, then in
the owner's object store), the rows that name them are written in the transaction, and the branch
moves only after the commit (`Tx.after_commit`). Work that changes files registers its undo
(`Tx.undo`) before it starts, so a failed transaction leaves the worktree as it was. The caller holds
the worktree lock.

A daemon-held worktree is on its daemon's machine; the service knows it by the task's
`head_commit_sha`, a commit of the object store. While the task is not running, the service changes
its code on the records: a new commit in the store (e.g. the target's tree on top of the head for a
rewind) that becomes the head, which the next daemon to claim the task materializes. Objects stored
by a transaction that then fails are unreferenced, and garbage collection removes them.

Either way every checkpoint's commit is in the object store before its row commits, so any server
process serves any checkpoint, and a task can move from one placement to the other by a fork or a
continuation.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from makima.server import git
from makima.server.domain.conversation import take_snapshot
from makima.server.domain.enums import CheckpointKind, SnapshotReason, TimelineKind, WorktreePlacement
from makima.server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from makima.server.domain.runtime import Tx
from makima.server.domain.workspace import MAX_FILE_NAME_BYTES, MAX_PATH_BYTES, Workspace
from makima.server.git import commits
from makima.server.git.commits import CommitInfo
from makima.server.git.errors import InvalidPackError
from makima.server.git.objects import OwnerObjectStore
from makima.server.store import checkpoints, events
from makima.server.store import commits as commit_records
from makima.server.store.models import Task, TaskCheckpoint

INITIAL_STATE = "initial state"

A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class WorktreeRequest:
    """Where a new task's worktree comes from (an empty repository, or a repository at a ref) and
    where it lives."""

    repository: str | None = None
    ref: str | None = None
    placement: WorktreePlacement = WorktreePlacement.SERVICE


def default_branch(task: Task) -> str:
    return f"makima/{task.id}"


def daemon_held(task: Task) -> bool:
    return task.placement == WorktreePlacement.DAEMON


def worktree_of(task: Task) -> Path:
    """The task's service-held worktree; FAILED_PRECONDITION NO_WORKTREE, or WORKTREE_ON_DAEMON."""
    if daemon_held(task):
        raise FailedPrecondition(
            f"the worktree of task {task.id} is held by its daemon, not by the service",
            reason="WORKTREE_ON_DAEMON",
            metadata={"task": str(task.id)},
        )
    if not task.worktree_path or not task.branch:
        raise FailedPrecondition(
            f"task {task.id} has no worktree", reason="NO_WORKTREE", metadata={"task": str(task.id)}
        )
    return Path(task.worktree_path)


def head_of(task: Task) -> str:
    """The commit the task's code is at on the records; FAILED_PRECONDITION NO_WORKTREE if it has none."""
    if not task.head_commit_sha:
        raise FailedPrecondition(
            f"task {task.id} has no code on the service's records",
            reason="NO_WORKTREE",
            metadata={"task": str(task.id)},
        )
    return task.head_commit_sha


async def create_worktree(tx: Tx, ws: Workspace, task: Task, request: WorktreeRequest) -> TaskCheckpoint:
    """Give a new `task` (its branch set) a worktree where `request` says, and its first checkpoint."""
    if request.placement == WorktreePlacement.SERVICE:
        return await _service_worktree(tx, ws, task, request, commit_sha=None)
    if request.repository:
        initial = await _import_repository(tx, ws, request)
    else:
        initial = await tx.in_store(
            lambda store: commits.make_commit(store, tree_sha=None, parent_sha=None, message=INITIAL_STATE)
        )
    task.placement = WorktreePlacement.DAEMON.value
    return await record_checkpoint(tx, task, initial, message=INITIAL_STATE, kind=CheckpointKind.INITIAL)


async def start_worktree_at(
    tx: Tx, ws: Workspace, task: Task, source: Task, commit_sha: str, placement: WorktreePlacement
) -> TaskCheckpoint:
    """Give a new `task` (its branch set) a worktree at `commit_sha` of `source`, where `placement` says.

    A service-held worktree of a service-held source shares the source repository's objects; one of a
    daemon-held source is checked out from the object store. A daemon-held worktree starts at the
    source commit itself, whose objects the store shares: nothing is copied. The caller holds the
    source worktree's lock when it is service-held.
    """
    if placement == WorktreePlacement.SERVICE and not daemon_held(source):
        request = WorktreeRequest(repository=str(worktree_of(source)))
        return await _service_worktree(tx, ws, task, request, commit_sha=commit_sha)
    if placement == WorktreePlacement.SERVICE:
        return await _service_worktree_from_store(tx, ws, task, commit_sha)
    if not daemon_held(source):
        await store_commit(tx, ws, worktree_of(source), commit_sha)
    task.placement = WorktreePlacement.DAEMON.value
    return await record_checkpoint(
        tx, task, await stored_commit(tx, commit_sha), message=INITIAL_STATE, kind=CheckpointKind.INITIAL
    )


async def _service_worktree(
    tx: Tx, ws: Workspace, task: Task, request: WorktreeRequest, *, commit_sha: str | None
) -> TaskCheckpoint:
    """An empty repository, or a clone at a ref sharing the source's objects, under the workspace root.

    With `commit_sha` the repository is another task's worktree (fork, continue), not one the caller
    named: a source that reads outside the root is then that task's fault (FAILED_PRECONDITION).
    """
    assert task.branch is not None
    path = ws.task_path(task.id)
    source = None
    if request.repository:
        source = await _source_repository(ws, request.repository, from_caller=commit_sha is None)
    await tx.hold(ws.lock(path))
    tx.undo.append(lambda: ws.discard(path))
    task.worktree_path = str(path)
    task.placement = WorktreePlacement.SERVICE.value
    if source is None:
        await ws.run(git.init_worktree, path, branch=task.branch)
        return await checkpoint_locked(tx, ws, task, message=INITIAL_STATE, kind=CheckpointKind.INITIAL)
    try:
        start = await ws.run(git.clone_worktree, source, path, ref=commit_sha or request.ref, branch=task.branch)
    except NotFound as exc:
        raise InvalidArgument.of("worktree.ref", exc.message) from None
    return await _record_start(tx, ws, task, path, start)


async def _service_worktree_from_store(tx: Tx, ws: Workspace, task: Task, commit_sha: str) -> TaskCheckpoint:
    """A repository under the workspace root holding `commit_sha` from the object store, checked out
    on the task's branch at that commit, as a clone would be."""
    assert task.branch is not None
    branch = task.branch
    path = ws.task_path(task.id)
    await tx.hold(ws.lock(path))
    tx.undo.append(lambda: ws.discard(path))
    await ws.run(git.init_worktree, path, branch=branch)
    await tx.in_store(lambda store: commits.seed_repository(store, path, branch=branch, commit_sha=commit_sha))
    await ws.run(git.restore, path, commit_sha=commit_sha, force=True)
    task.worktree_path = str(path)
    task.placement = WorktreePlacement.SERVICE.value
    return await _record_start(tx, ws, task, path, commit_sha)


async def _record_start(tx: Tx, ws: Workspace, task: Task, path: Path, commit_sha: str) -> TaskCheckpoint:
    """Record the commit a new worktree was checked out at as its initial checkpoint.

    The branch already points at it and the worktree holds exactly its tree, so no commit is made:
    the branch head, the checkpoint and a fork's `commit_sha` all name the source commit.
    """
    await store_commit(tx, ws, path, commit_sha)
    commit = await stored_commit(tx, commit_sha)
    return await record_checkpoint(tx, task, commit, message=INITIAL_STATE, kind=CheckpointKind.INITIAL)


async def _import_repository(tx: Tx, ws: Workspace, request: WorktreeRequest) -> CommitInfo:
    """Store the history of the caller's repository (under the workspace root) up to its `ref`.

    The ref is resolved by cloning into a scratch directory, removed afterwards: the git layer's one
    way to read a repository the caller named, with every path checked inside the root.
    """
    assert request.repository is not None
    source = await _source_repository(ws, request.repository, from_caller=True)
    scratch = ws.root / ".scratch" / str(uuid.uuid4())
    try:
        sha = await ws.run(git.clone_worktree, source, scratch, ref=request.ref, branch="makima/import")
    except NotFound as exc:
        raise InvalidArgument.of("worktree.ref", exc.message) from None
    finally:
        await ws.discard(scratch)
    await _store_from(tx, source, sha)
    return await stored_commit(tx, sha)


async def _source_repository(ws: Workspace, repository: str, *, from_caller: bool) -> git.SourceRepository:
    """The repository to clone, checked before any of its objects is read.

    Refused with reason PATH_ESCAPES_WORKSPACE if anything git would read of it (.git, gitdir,
    commondir, objects, alternates, links) lies outside the root: INVALID_ARGUMENT on
    worktree.repository when the caller named it, FAILED_PRECONDITION for a task's own worktree.
    """
    raw = os.fsencode(repository if os.path.isabs(repository) else os.path.join(ws.root, repository))
    if len(raw) > MAX_PATH_BYTES:
        raise InvalidArgument.of("worktree.repository", f"makes a path of more than {MAX_PATH_BYTES} bytes")
    if any(len(part) > MAX_FILE_NAME_BYTES for part in raw.split(b"/")):
        raise InvalidArgument.of(
            "worktree.repository", f"has a path component of more than {MAX_FILE_NAME_BYTES} bytes"
        )
    try:
        return await asyncio.to_thread(git.resolve_repository, ws.root, repository)
    except git.PathEscapeError as exc:
        part = exc.metadata.get("part", "repository")
        if not from_caller:
            raise FailedPrecondition(
                f"the source worktree's {part} leads outside the workspace root",
                reason="PATH_ESCAPES_WORKSPACE",
                metadata={"part": part},
            ) from None
        description = (
            "must be a path inside the workspace root"
            if part == "repository"
            else f"must be a repository inside the workspace root: its {part} leads outside"
        )
        raise InvalidArgument.of("worktree.repository", description, reason="PATH_ESCAPES_WORKSPACE") from None
    except git.NotARepositoryError:
        if not from_caller:
            raise FailedPrecondition("the source worktree is no longer a git repository", reason="GIT_ERROR") from None
        raise InvalidArgument.of("worktree.repository", "is not a git repository") from None


async def store_commit(tx: Tx, ws: Workspace, path: Path, commit_sha: str) -> None:
    """Put what the owner's object store lacks of `commit_sha` into it, from the service-held worktree `path`."""
    await _store_from(tx, await _source_repository(ws, str(path), from_caller=False), commit_sha, worktree=True)


async def _store_from(tx: Tx, source: git.SourceRepository, commit_sha: str, *, worktree: bool = False) -> None:
    try:
        await tx.in_store(lambda store: commits.store_from_repository(store, source, commit_sha, worktree=worktree))
    except InvalidPackError as exc:
        # The store keeps only what every daemon can check out safely, e.g. no name some file
        # system reads as .git; the service-held snapshot took such a file as it found it.
        raise FailedPrecondition(
            f"the object store refuses the commit {commit_sha[:12]}: {exc.message}",
            reason="WORKTREE_NOT_STORABLE",
            metadata={"commit_sha": commit_sha, **exc.metadata},
        ) from None


def required_commit(store: OwnerObjectStore, sha: str) -> CommitInfo:
    """A commit the records name; FAILED_PRECONDITION OBJECTS_MISSING if the store lacks it (it never should)."""
    commit = commits.read_commit(store, sha)
    if commit is None:
        raise FailedPrecondition(
            f"commit {sha} is not in the object store", reason="OBJECTS_MISSING", metadata={"commit_sha": sha}
        )
    return commit


async def stored_commit(tx: Tx, commit_sha: str) -> CommitInfo:
    """A commit of the owner's object store that a record names (see `required_commit`)."""
    return await tx.in_store(lambda store: required_commit(store, commit_sha))


async def checkpoint_locked(
    tx: Tx, ws: Workspace, task: Task, *, message: str, kind: CheckpointKind, write_index: bool = True
) -> TaskCheckpoint:
    """Commit the whole service-held worktree, store its objects, and record it with a snapshot of the conversation."""
    path = worktree_of(task)
    assert task.branch is not None
    snap = await ws.run(git.snapshot, path, branch=task.branch, message=message)
    await store_commit(tx, ws, path, snap.commit_sha)
    commit = CommitInfo(
        sha=snap.commit_sha, tree_sha=snap.tree_sha, parent_shas=() if snap.parent_sha is None else (snap.parent_sha,)
    )
    checkpoint = await record_checkpoint(tx, task, commit, message=message, kind=kind)
    branch = task.branch
    tx.after_commit.append(lambda: ws.run(git.publish, path, branch=branch, snapshot=snap, write_index=write_index))
    return checkpoint


async def record_checkpoint(
    tx: Tx, task: Task, commit: CommitInfo, *, message: str, kind: CheckpointKind
) -> TaskCheckpoint:
    """Record a stored commit as the task's newest checkpoint and head, with a snapshot of its conversation."""
    assert task.branch is not None
    conversation = await take_snapshot(tx, task, SnapshotReason.CHECKPOINT)
    checkpoint = TaskCheckpoint(
        owner_id=tx.owner_id,
        task_id=task.id,
        commit_sha=commit.sha,
        parent_commit_sha=commit.parent_shas[0] if commit.parent_shas else "",
        branch=task.branch,
        message=message,
        kind=kind.value,
        conversation_snapshot_id=conversation.id,
        message_count=task.message_count,
        event_sequence=await events.last_sequence(tx.session, owner_id=tx.owner_id, task_id=task.id),
        create_time=tx.now,
    )
    tx.session.add(checkpoint)
    task.head_commit_sha = commit.sha
    await tx.session.flush()
    tx.record(
        TimelineKind.CHECKPOINT_CREATED,
        f"{kind.value} checkpoint {commit.sha[:12]} of task {task.name!r}",
        contract_id=task.contract_id,
        task_id=task.id,
        data={
            "checkpoint_id": str(checkpoint.id),
            "commit_sha": commit.sha,
            "kind": kind.value,
            "message_count": task.message_count,
        },
    )
    return checkpoint


@dataclass(frozen=True)
class CodeRewound:
    """A code rewind: the safety checkpoint of the code before it, the files it changed, and the
    rewind commit (the target's tree on top of the safety commit) that becomes the head, to record
    with `record_rewind` once the use case has settled the conversation.
    """

    safety: TaskCheckpoint
    changes: list[git.FileChange]
    rewind_commit: CommitInfo
    rewind_message: str
    # A service-held worktree's objects on their way to the object store, which `record_rewind`
    # awaits: the rest of the use case's database work is done meanwhile.
    stored: asyncio.Task[None] | None = None


def _rewind_message(target: TaskCheckpoint) -> str:
    return f"rewind to checkpoint {target.commit_sha[:12]}"


async def rewind_code(tx: Tx, ws: Workspace, task: Task, target: TaskCheckpoint, *, force: bool = False) -> CodeRewound:
    """Make the task's code the target's: safety checkpoint first, so the rewind can be undone.

    Either way the head becomes a commit of the target's tree on top of the safety commit (see
    `record_rewind`): history stays linear and `git status` is clean. Service-held: worktree and
    index = the target's tree; what the safety checkpoint cannot hold (ignored files, nested
    repositories) standing where the target has something else refuses the rewind with
    FAILED_PRECONDITION UNTRACKED_IN_THE_WAY naming it, unless `force`. Daemon-held (not running):
    the code before the rewind is the head, which a checkpoint of the task already records (every
    move of a daemon-held head records one): that checkpoint is the safety checkpoint, and the
    rewind commit is made in the object store.
    """
    if not daemon_held(task):
        await tx.hold(ws.lock(worktree_of(task)))
        return await _rewind_worktree(tx, ws, task, target, force=force)
    head = await stored_commit(tx, head_of(task))
    safety = await commit_records.newest_checkpoint_of_commit(
        tx.session, owner_id=tx.owner_id, task_id=task.id, commit_sha=head.sha
    )
    if safety is None:
        raise FailedPrecondition(
            f"no checkpoint of task {task.id} records its head {head.sha}",
            reason="HEAD_NOT_CHECKPOINTED",
            metadata={"task": str(task.id), "head_commit_sha": head.sha},
        )
    wanted = await stored_commit(tx, target.commit_sha)
    message = _rewind_message(target)

    def rewind(store: OwnerObjectStore) -> tuple[CommitInfo, list[git.FileChange]]:
        made = commits.make_commit(store, tree_sha=wanted.tree_sha, parent_sha=head.sha, message=message)
        return made, commits.changes_between(store, head, wanted)

    made, changes = await tx.in_store(rewind)
    return CodeRewound(safety=safety, changes=changes, rewind_commit=made, rewind_message=message)


async def record_rewind(tx: Tx, task: Task, code: CodeRewound | None) -> TaskCheckpoint | None:
    """Record a code rewind's commit as the task's head checkpoint (kind REWIND), with the
    conversation as the use case left it; None if the code was not rewound."""
    if code is None:
        return None
    checkpoint = await record_checkpoint(
        tx, task, code.rewind_commit, message=code.rewind_message, kind=CheckpointKind.REWIND
    )
    if code.stored is not None:
        await code.stored  # the row commits only with its commit in the object store
    return checkpoint


async def _rewind_worktree(tx: Tx, ws: Workspace, task: Task, target: TaskCheckpoint, *, force: bool) -> CodeRewound:
    """Safety checkpoint of the current state, worktree and index = the target's tree, and the
    rewind commit on top of the safety commit, published after it once the transaction commits."""
    path = worktree_of(task)
    assert task.branch is not None
    branch = task.branch
    message = f"safety checkpoint before rewinding to {target.commit_sha[:12]}"
    snap, head = await _safety_snapshot(tx, ws, task, message)
    # By value: an undo runs after the rollback, which expires the rows the transaction loaded.
    before = snap.commit_sha
    tx.undo.append(lambda: ws.run(git.restore, path, commit_sha=before, force=True))
    if head is not None:
        safety = head
    else:
        # A new safety commit is in the object store before any file changes: a refusal (a name some
        # file system reads as .git) then fails the rewind with the worktree untouched. Its row is
        # written meanwhile.
        commit = CommitInfo(
            sha=before, tree_sha=snap.tree_sha, parent_shas=() if snap.parent_sha is None else (snap.parent_sha,)
        )
        safety, _ = await _both(
            record_checkpoint(tx, task, commit, message=message, kind=CheckpointKind.SAFETY),
            store_commit(tx, ws, path, before),
        )
    rewind_message = _rewind_message(target)
    # The safety snapshot read the worktree under the lock held since: the restore starts from it.
    done = await ws.run(
        git.rewind,
        path,
        commit_sha=target.commit_sha,
        parent_sha=before,
        message=rewind_message,
        force=force,
        worktree=snap,
    )
    made = done.commit
    # The rewind commit (its tree is the target's, already stored) is stored while the use case
    # records the rewind (see `record_rewind`); a use case that fails first still waits for it, so
    # nothing outlives the transaction.
    stored = asyncio.create_task(store_commit(tx, ws, path, made.commit_sha))
    tx.stack.push_async_callback(_settled, stored)
    if head is None:
        tx.after_commit.append(lambda: ws.run(git.publish, path, branch=branch, snapshot=snap, write_index=False))
    tx.after_commit.append(lambda: ws.run(git.publish, path, branch=branch, snapshot=made, write_index=False))
    commit = CommitInfo(sha=made.commit_sha, tree_sha=made.tree_sha, parent_shas=(before,))
    return CodeRewound(
        safety=safety, changes=done.changes, rewind_commit=commit, rewind_message=rewind_message, stored=stored
    )


async def _safety_snapshot(
    tx: Tx, ws: Workspace, task: Task, message: str
) -> tuple[git.Snapshot, TaskCheckpoint | None]:
    """A snapshot of the worktree as a rewind finds it, and the checkpoint that already keeps it, if any.

    A worktree that still holds its branch head's tree, which a checkpoint records, needs no new
    commit: the snapshot is the head itself and that checkpoint is the safety one. Otherwise the
    snapshot is a new commit, to store and record as a SAFETY checkpoint.
    """
    assert task.branch is not None
    path = worktree_of(task)
    snap = await ws.run(git.snapshot, path, branch=task.branch, message=message, reuse_head=True)
    if snap.reused:
        head = await commit_records.newest_checkpoint_of_commit(
            tx.session, owner_id=tx.owner_id, task_id=task.id, commit_sha=snap.commit_sha
        )
        if head is not None:
            return snap, head
        # A head no checkpoint records: a commit of the same tree on top of it is recorded instead.
        snap = await ws.run(git.snapshot, path, branch=task.branch, message=message)
    return snap, None


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, run at once; the first failure is raised only once neither is running."""
    a, b = await asyncio.gather(first, second, return_exceptions=True)
    for outcome in (a, b):
        if isinstance(outcome, BaseException):
            raise outcome
    return cast(A, a), cast(B, b)


async def _settled(work: asyncio.Task[None]) -> None:
    """Wait for `work` at the end of a transaction that may not have (its failure is already known)."""
    if not work.done():
        await asyncio.wait([work])
    if not work.cancelled():
        work.exception()  # retrieved: a failure here failed the use case, or came after it failed


async def load_checkpoint(tx: Tx, task: Task, checkpoint_id: uuid.UUID) -> TaskCheckpoint:
    """A checkpoint of `task` (NOT_FOUND if unknown, another owner's, or another task's)."""
    checkpoint = await checkpoints.get_checkpoint(tx.session, owner_id=tx.owner_id, checkpoint_id=checkpoint_id)
    if checkpoint is None or checkpoint.task_id != task.id:
        raise NotFound.resource("checkpoint", checkpoint_id)
    return checkpoint
