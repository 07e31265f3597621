"""Git work inside a use case's transaction: worktree creation, checkpoints and code rewinds.

Order of operations keeps git and the database consistent: commits are written as unreferenced
objects first, the rows that name them are written in the transaction, and the branch moves only
after the commit (`Tx.after_commit`). Work that changes files registers its undo (`Tx.undo`) before
it starts, so a failed transaction leaves the worktree as it was. The caller holds the worktree lock.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from makima.server import git
from makima.server.domain.conversation import take_snapshot
from makima.server.domain.enums import CheckpointKind, SnapshotReason, TimelineKind
from makima.server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from makima.server.domain.runtime import Tx
from makima.server.domain.workspace import MAX_FILE_NAME_BYTES, MAX_PATH_BYTES, Workspace
from makima.server.store import checkpoints, events
from makima.server.store.models import Task, TaskCheckpoint


@dataclass(frozen=True)
class WorktreeRequest:
    """Where a new task's worktree comes from: an empty repository, or a repository at a ref."""

    repository: str | None = None
    ref: str | None = None


def default_branch(task: Task) -> str:
    return f"makima/{task.id}"


def worktree_of(task: Task) -> Path:
    """The task's worktree, or FAILED_PRECONDITION NO_WORKTREE."""
    if not task.worktree_path or not task.branch:
        raise FailedPrecondition(
            f"task {task.id} has no worktree", reason="NO_WORKTREE", metadata={"task": str(task.id)}
        )
    return Path(task.worktree_path)


async def create_worktree(
    tx: Tx, ws: Workspace, task: Task, request: WorktreeRequest, *, commit_sha: str | None = None
) -> TaskCheckpoint:
    """Give `task` a worktree on its branch (empty, or cloned at a ref sharing objects) and its first checkpoint.

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
    if source is None:
        await ws.run(git.init_worktree, path, branch=task.branch)
    else:
        try:
            await ws.run(git.clone_worktree, source, path, ref=commit_sha or request.ref, branch=task.branch)
        except NotFound:
            raise InvalidArgument.of("worktree.ref", f"unknown ref {request.ref!r}") from None
    task.worktree_path = str(path)
    return await checkpoint_locked(tx, ws, task, message="initial state", kind=CheckpointKind.MANUAL)


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


async def checkpoint_locked(
    tx: Tx, ws: Workspace, task: Task, *, message: str, kind: CheckpointKind, write_index: bool = True
) -> TaskCheckpoint:
    """Commit the whole worktree and record it with a snapshot of the conversation."""
    path = worktree_of(task)
    assert task.branch is not None
    snap = await ws.run(git.snapshot, path, branch=task.branch, message=message)
    conversation = await take_snapshot(tx, task, SnapshotReason.CHECKPOINT)
    checkpoint = TaskCheckpoint(
        owner_id=tx.owner_id,
        task_id=task.id,
        commit_sha=snap.commit_sha,
        parent_commit_sha=snap.parent_sha or "",
        branch=task.branch,
        message=message,
        kind=kind.value,
        conversation_snapshot_id=conversation.id,
        message_count=task.message_count,
        event_sequence=await events.last_sequence(tx.session, owner_id=tx.owner_id, task_id=task.id),
        create_time=tx.now,
    )
    tx.session.add(checkpoint)
    await tx.session.flush()
    branch = task.branch
    tx.after_commit.append(lambda: ws.run(git.publish, path, branch=branch, snapshot=snap, write_index=write_index))
    tx.record(
        TimelineKind.CHECKPOINT_CREATED,
        f"{kind.value} checkpoint {snap.commit_sha[:12]} of task {task.name!r}",
        contract_id=task.contract_id,
        task_id=task.id,
        data={
            "checkpoint_id": str(checkpoint.id),
            "commit_sha": snap.commit_sha,
            "kind": kind.value,
            "message_count": task.message_count,
        },
    )
    return checkpoint


@dataclass(frozen=True)
class CodeRewound:
    safety: TaskCheckpoint
    changes: list[git.FileChange]


async def rewind_code_locked(tx: Tx, ws: Workspace, task: Task, target: TaskCheckpoint) -> CodeRewound:
    """Safety checkpoint of the current state, then worktree and index = the target's tree."""
    path = worktree_of(task)
    safety = await checkpoint_locked(
        tx,
        ws,
        task,
        message=f"safety checkpoint before rewinding to {target.commit_sha[:12]}",
        kind=CheckpointKind.SAFETY,
        write_index=False,
    )
    tx.undo.append(lambda: ws.run(git.restore, path, commit_sha=safety.commit_sha))
    changes = await ws.run(git.restore, path, commit_sha=target.commit_sha)
    return CodeRewound(safety=safety, changes=changes)


async def load_checkpoint(tx: Tx, task: Task, checkpoint_id: uuid.UUID) -> TaskCheckpoint:
    """A checkpoint of `task` (NOT_FOUND if unknown, another owner's, or another task's)."""
    checkpoint = await checkpoints.get_checkpoint(tx.session, owner_id=tx.owner_id, checkpoint_id=checkpoint_id)
    if checkpoint is None or checkpoint.task_id != task.id:
        raise NotFound.resource("checkpoint", checkpoint_id)
    return checkpoint
