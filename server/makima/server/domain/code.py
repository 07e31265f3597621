"""TaskFork use cases on code and conversation: checkpoint, compare, rewind, resume from a
checkpoint, branch, fork and continue. Each runs in one transaction (see domain.worktrees for how
git work is ordered around it, for service-held and daemon-held worktrees)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from makima.server import git
from makima.server.domain import conversation
from makima.server.domain.contracts import load_contract
from makima.server.domain.enums import (
    CheckpointKind,
    SnapshotReason,
    TaskKind,
    TimelineKind,
    WorktreePlacement,
)
from makima.server.domain.errors import AlreadyExists, InvalidArgument, NotFound
from makima.server.domain.runtime import Caller, Tx
from makima.server.domain.tasks import (
    back_to_pending,
    derived_name,
    load_task,
    new_task,
    refuse_if_running,
    refuse_unless_resumable,
)
from makima.server.domain.workspace import Workspace
from makima.server.domain.worktrees import (
    checkpoint_locked,
    daemon_held,
    head_of,
    load_checkpoint,
    record_checkpoint,
    record_rewind,
    required_commit,
    rewind_code,
    start_worktree_at,
    stored_commit,
    worktree_of,
)
from makima.server.git import commits
from makima.server.git.objects import OwnerObjectStore
from makima.server.store import branches as branch_records
from makima.server.store import checkpoints
from makima.server.store.models import ConversationSnapshot, Task, TaskBranch, TaskCheckpoint


class RewindMode(StrEnum):
    CODE = "code"
    CONVERSATION = "conversation"
    BOTH = "both"


@dataclass(frozen=True, kw_only=True, slots=True)
class CreateCheckpointInput:
    task_id: uuid.UUID
    message: str


async def create_checkpoint(tx: Tx, inp: CreateCheckpointInput) -> TaskCheckpoint:
    task = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    await tx.hold(tx.ws.lock(worktree_of(task)))
    return await checkpoint_locked(tx, tx.ws, task, message=inp.message, kind=CheckpointKind.MANUAL)


@dataclass(frozen=True, kw_only=True, slots=True)
class CompareCheckpointsInput:
    task_id: uuid.UUID
    base_checkpoint_id: uuid.UUID
    # None: compare with the live worktree.
    target_checkpoint_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Comparison:
    base: TaskCheckpoint
    target: TaskCheckpoint | None
    changes: list[git.FileChange]


async def compare_checkpoints(caller: Caller, inp: CompareCheckpointsInput) -> Comparison:
    """Files changed from one checkpoint to another, or to the live worktree.

    Between two checkpoints of a daemon-held task, the trees are compared in the object store.
    """
    rt, base_id, target_id = caller.rt, inp.base_checkpoint_id, inp.target_checkpoint_id
    async with caller.read() as session:
        task = await load_task(session, caller.owner_id, inp.task_id)
        found = {}
        for checkpoint_id in filter(None, (base_id, target_id)):
            checkpoint = await checkpoints.get_checkpoint(
                session, owner_id=caller.owner_id, checkpoint_id=checkpoint_id
            )
            if checkpoint is None or checkpoint.task_id != task.id:
                raise NotFound.resource("checkpoint", checkpoint_id)
            found[checkpoint_id] = checkpoint
    base, target = found[base_id], found.get(target_id) if target_id else None
    if daemon_held(task) and target is not None:
        assert rt.objects is not None
        shas = (base.commit_sha, target.commit_sha)

        def compare(store: OwnerObjectStore) -> list[git.FileChange]:
            return commits.changes_between(store, *(required_commit(store, sha) for sha in shas))

        return Comparison(base=base, target=target, changes=await rt.objects.run(caller.owner_id, compare))
    path = worktree_of(task)
    async with rt.ws.lock(path):
        changes = await rt.ws.run(
            git.compare, path, base_sha=base.commit_sha, target_sha=target.commit_sha if target else None
        )
    return Comparison(base=base, target=target, changes=changes)


@dataclass(frozen=True)
class Rewound:
    task: Task
    safety: TaskCheckpoint | None
    conversation_snapshot: ConversationSnapshot | None
    changed_files: int
    # The task's new head after a code rewind: the target's tree on top of the safety commit.
    rewind: TaskCheckpoint | None = None


async def _rewind(
    tx: Tx, ws: Workspace, task: Task, target: TaskCheckpoint, mode: RewindMode, *, force: bool = False
) -> Rewound:
    code = before = None
    if mode in (RewindMode.CODE, RewindMode.BOTH):
        code = await rewind_code(tx, ws, task, target, force=force)
    if mode in (RewindMode.CONVERSATION, RewindMode.BOTH):
        snapshot = await conversation.load_snapshot(tx, target.conversation_snapshot_id)
        before = await conversation.rewind_to(tx, task, snapshot, SnapshotReason.REWIND)
    rewind = await record_rewind(tx, task, code)
    return Rewound(
        task=task,
        safety=code.safety if code else None,
        conversation_snapshot=before,
        changed_files=len(code.changes) if code else 0,
        rewind=rewind,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RewindTaskInput:
    task_id: uuid.UUID
    checkpoint_id: uuid.UUID
    mode: RewindMode
    # Rewind even over what the safety checkpoint cannot hold (see `rewind_code`).
    force: bool = False


async def rewind_task(tx: Tx, inp: RewindTaskInput) -> Rewound:
    """Rewind code, conversation or both to a checkpoint; what it replaces stays recoverable, or the
    rewind is refused unless `force` (see `rewind_code`)."""
    task = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    refuse_if_running(task)
    target = await load_checkpoint(tx, task, inp.checkpoint_id)
    done = await _rewind(tx, tx.ws, task, target, inp.mode, force=inp.force)
    task.version += 1
    task.update_time = tx.now
    tx.record(
        TimelineKind.TASK_REWOUND,
        f"task {task.name!r} rewound ({inp.mode.value}) to checkpoint {target.commit_sha[:12]}",
        contract_id=task.contract_id,
        task_id=task.id,
        data=_rewind_data(target, inp.mode, done),
    )
    return done


def _rewind_data(target: TaskCheckpoint, mode: RewindMode, done: Rewound) -> dict[str, object]:
    return {
        "checkpoint_id": str(target.id),
        "commit_sha": target.commit_sha,
        "mode": mode.value,
        "safety_checkpoint_id": str(done.safety.id) if done.safety else None,
        "conversation_snapshot_id": str(done.conversation_snapshot.id) if done.conversation_snapshot else None,
        "files_changed": done.changed_files,
        "head_commit_sha": done.rewind.commit_sha if done.rewind else None,
    }


@dataclass(frozen=True)
class ResumedFrom:
    phase: str
    previous_status: str
    checkpoint_id: uuid.UUID | None


@dataclass(frozen=True)
class TaskResumed:
    task: Task
    resumed_from: ResumedFrom


@dataclass(frozen=True)
class TaskResumedFromCheckpoint(TaskResumed):
    # What going back to the checkpoint did.
    rewound: Rewound


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeFromCheckpointInput:
    task_id: uuid.UUID
    checkpoint_id: uuid.UUID


async def resume_from_checkpoint(tx: Tx, inp: ResumeFromCheckpointInput) -> TaskResumedFromCheckpoint:
    """Rewind code (if any) and conversation to a checkpoint, then put the task back to pending."""
    task = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    refuse_unless_resumable(task, as_is=False)
    target = await load_checkpoint(tx, task, inp.checkpoint_id)
    mode = RewindMode.BOTH if task.placement else RewindMode.CONVERSATION
    done = await _rewind(tx, tx.ws, task, target, mode)
    previous = back_to_pending(tx, task)
    phase = (await load_contract(tx.session, tx.owner_id, task.contract_id)).phase if task.contract_id else ""
    tx.record(
        TimelineKind.TASK_RESUMED,
        f"task {task.name!r} resumed from checkpoint {target.commit_sha[:12]}",
        contract_id=task.contract_id,
        task_id=task.id,
        phase=phase or None,
        data={**_rewind_data(target, mode, done), "previous_status": previous},
    )
    resumed_from = ResumedFrom(phase=phase, previous_status=previous, checkpoint_id=target.id)
    return TaskResumedFromCheckpoint(task=task, resumed_from=resumed_from, rewound=done)


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeTaskInput:
    task_id: uuid.UUID


async def resume_task(tx: Tx, inp: ResumeTaskInput) -> TaskResumed:
    """Put an interrupted (or failed) task back to pending, conversation and worktree as they are."""
    task = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    refuse_unless_resumable(task, as_is=True)
    previous = back_to_pending(tx, task)
    phase = (await load_contract(tx.session, tx.owner_id, task.contract_id)).phase if task.contract_id else ""
    tx.record(
        TimelineKind.TASK_RESUMED,
        f"task {task.name!r} resumed ({previous})",
        contract_id=task.contract_id,
        task_id=task.id,
        phase=phase or None,
        data={"previous_status": previous, "message_count": task.message_count},
    )
    return TaskResumed(task=task, resumed_from=ResumedFrom(phase=phase, previous_status=previous, checkpoint_id=None))


@dataclass(frozen=True)
class Branch:
    ref: str
    commit_sha: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CreateBranchInput:
    task_id: uuid.UUID
    checkpoint_id: uuid.UUID
    name: str


async def create_branch(tx: Tx, inp: CreateBranchInput) -> Branch:
    """A git branch at a checkpoint's commit, in the task's repository.

    A service-held repository gets the branch at once. A daemon-held task's repository is on the
    daemons: the branch is recorded, and the next daemon to claim the task creates it
    (`ClaimedWorktree.branches`), as every code operation on such a task is; so the task must not be
    running. Either way a name that exists or clashes (`a` versus `a/b`) is ALREADY_EXISTS.
    """
    task = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    target = await load_checkpoint(tx, task, inp.checkpoint_id)
    name, ws = inp.name, tx.ws
    if daemon_held(task):
        refuse_if_running(task)
        ref = await _record_branch(tx, task, target, name)
    else:
        path = worktree_of(task)
        await tx.hold(ws.lock(path))
        ref = await ws.run(git.create_branch, path, name=name, commit_sha=target.commit_sha)
        tx.undo.append(lambda: ws.run(git.delete_branch, path, name=name, commit_sha=target.commit_sha))
    tx.record(
        TimelineKind.BRANCH_CREATED,
        f"branch {name!r} created at {target.commit_sha[:12]} for task {task.name!r}",
        contract_id=task.contract_id,
        task_id=task.id,
        data={"ref": ref, "commit_sha": target.commit_sha, "checkpoint_id": str(target.id)},
    )
    return Branch(ref=ref, commit_sha=target.commit_sha)


async def _record_branch(tx: Tx, task: Task, target: TaskCheckpoint, name: str) -> str:
    """Record branch `name` of a daemon-held task at `target`'s commit; returns its full ref name."""
    recorded = await branch_records.branches_of(tx.session, owner_id=tx.owner_id, task_id=task.id)
    for other in [task.branch or "", *(branch.name for branch in recorded)]:
        if other and (other == name or other.startswith(name + "/") or name.startswith(other + "/")):
            problem = "already exists" if other == name else f"clashes with {other!r}"
            raise AlreadyExists(
                f"branch {name!r} of task {task.id} {problem}",
                reason="BRANCH_EXISTS",
                metadata={"name": name, "existing": f"refs/heads/{other}"},
            )
    branch_records.add_branch(
        tx.session,
        TaskBranch(
            task_id=task.id,
            name=name,
            owner_id=tx.owner_id,
            commit_sha=target.commit_sha,
            checkpoint_id=target.id,
            create_time=tx.now,
        ),
    )
    return f"refs/heads/{name}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ForkInput:
    task_id: uuid.UUID
    checkpoint_id: uuid.UUID | None = None
    message_index: int | None = None
    name: str = ""
    branch_name: str = ""
    # None: where the source's worktree lives.
    placement: WorktreePlacement | None = None


@dataclass(frozen=True)
class Forked:
    task: Task
    commit_sha: str


def _placement(source: Task, asked: WorktreePlacement | None) -> WorktreePlacement:
    """Where a fork's or a continuation's worktree lives: where asked, else where the source's does."""
    assert source.placement is not None
    return asked or WorktreePlacement(source.placement)


async def _new_worktree_at(
    tx: Tx, ws: Workspace, task: Task, source: Task, commit_sha: str, *, branch_name: str, placement: WorktreePlacement
) -> None:
    """A worktree for `task` at `commit_sha` of `source` on a new branch, objects shared."""
    task.branch = branch_name or f"makima/{task.id}"
    git_name_ok(task.branch)
    if not daemon_held(source):
        await tx.hold(ws.lock(worktree_of(source)))
    await start_worktree_at(tx, ws, task, source, commit_sha, placement)


def git_name_ok(name: str) -> None:
    try:
        git.validate_branch_name(name)
    except git.InvalidRefNameError as exc:
        raise InvalidArgument.of("branch_name", str(exc), reason="INVALID_BRANCH_NAME") from None


async def fork_task(tx: Tx, inp: ForkInput) -> Forked:
    """A new task from a point of another task's history: code and conversation as they were there."""
    source = await load_task(tx.session, tx.owner_id, inp.task_id)
    if inp.checkpoint_id is not None:
        point: TaskCheckpoint | None = await load_checkpoint(tx, source, inp.checkpoint_id)
        assert point is not None
        snapshot = await conversation.load_snapshot(tx, point.conversation_snapshot_id)
        version, count = snapshot.conversation_id, snapshot.message_count
    else:
        assert inp.message_index is not None
        if not 0 <= inp.message_index < source.message_count:
            raise InvalidArgument.of(
                "message_index", f"must be between 0 and {source.message_count - 1} (the last message)"
            )
        assert source.conversation_id is not None
        version, count = source.conversation_id, inp.message_index + 1
        # A safety checkpoint holds code the user rewound away from, not the code at that message.
        point = await checkpoints.newest_at_or_before(
            tx.session,
            owner_id=tx.owner_id,
            task_id=source.id,
            message_count=count,
            excluded_kinds=(CheckpointKind.SAFETY,),
        )
    task = await new_task(
        tx,
        name=inp.name or derived_name(source.name, suffix=" (fork)"),
        instructions=source.instructions,
        kind=TaskKind.WORKER,
        contract_id=source.contract_id,
        conversation_from=(version, count),
        forked_from_task_id=source.id,
        forked_from_checkpoint_id=inp.checkpoint_id,
        forked_at_message_index=count,
    )
    commit_sha = ""
    if source.placement and point is not None:
        commit_sha = point.commit_sha
        placement = _placement(source, inp.placement)
        await _new_worktree_at(tx, tx.ws, task, source, commit_sha, branch_name=inp.branch_name, placement=placement)
    tx.record(
        TimelineKind.TASK_FORKED,
        f"task {task.name!r} forked from {source.name!r} at message {count}",
        contract_id=task.contract_id,
        task_id=task.id,
        data={
            "source_task_id": str(source.id),
            "checkpoint_id": str(point.id) if point else None,
            "commit_sha": commit_sha or None,
            "message_count": count,
        },
    )
    return Forked(task=task, commit_sha=commit_sha)


@dataclass(frozen=True)
class Continued:
    task: Task
    source_checkpoint: TaskCheckpoint | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ContinueInput:
    task_id: uuid.UUID
    name: str = ""
    instructions: str = ""
    # None: where the source's worktree lives.
    placement: WorktreePlacement | None = None


async def continue_task(tx: Tx, inp: ContinueInput) -> Continued:
    """A new task starting from the previous task's latest state: its worktree, checkpointed first; for a
    daemon-held source, its head on the records (recorded as the continuation checkpoint)."""
    source = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    refuse_if_running(source)
    checkpoint = None
    message = "state handed to a continuation"
    ws = tx.ws
    if daemon_held(source):
        head = await stored_commit(tx, head_of(source))
        checkpoint = await record_checkpoint(tx, source, head, message=message, kind=CheckpointKind.CONTINUATION)
    elif source.placement:
        await tx.hold(ws.lock(worktree_of(source)))
        checkpoint = await checkpoint_locked(tx, ws, source, message=message, kind=CheckpointKind.CONTINUATION)
    task = await new_task(
        tx,
        name=inp.name or derived_name(source.name, suffix=" (continued)"),
        instructions=inp.instructions or source.instructions,
        kind=TaskKind.WORKER,
        contract_id=source.contract_id,
        continued_from_task_id=source.id,
    )
    if checkpoint is not None:
        task.branch = f"makima/{task.id}"
        await start_worktree_at(tx, ws, task, source, checkpoint.commit_sha, _placement(source, inp.placement))
    tx.record(
        TimelineKind.TASK_CONTINUED,
        f"task {task.name!r} continues {source.name!r}",
        contract_id=task.contract_id,
        task_id=task.id,
        data={
            "source_task_id": str(source.id),
            "checkpoint_id": str(checkpoint.id) if checkpoint else None,
        },
    )
    return Continued(task=task, source_checkpoint=checkpoint)
