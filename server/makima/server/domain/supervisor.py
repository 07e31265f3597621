"""Supervisor use cases: start, resume (continue / restart phase / from checkpoint), and the
conversation rewind and restore shared by supervisors and tasks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from makima.server.domain import conversation
from makima.server.domain.contracts import ContractView, load_contract
from makima.server.domain.enums import CheckpointKind, SnapshotReason, TaskKind, TimelineKind
from makima.server.domain.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from makima.server.domain.recording import conversation_task
from makima.server.domain.runtime import Tx
from makima.server.domain.tasks import (
    back_to_pending,
    derived_name,
    load_task,
    new_task,
    refuse_if_running,
    refuse_unless_resumable,
)
from makima.server.domain.worktrees import (
    WorktreeRequest,
    create_worktree,
    default_branch,
    load_checkpoint,
    record_rewind,
    rewind_code,
)
from makima.server.store import checkpoints
from makima.server.store import contracts as contract_store
from makima.server.store.models import ConversationSnapshot, SupervisorState, Task, TaskCheckpoint


@dataclass(frozen=True, kw_only=True, slots=True)
class StartSupervisorInput:
    contract_id: uuid.UUID
    instructions: str
    worktree: WorktreeRequest | None = None


@dataclass(frozen=True)
class Started:
    view: ContractView
    task: Task


async def start_supervisor(tx: Tx, inp: StartSupervisorInput) -> Started:
    """Create the supervisor task (pending) of a contract; a contract has one supervisor."""
    contract = await load_contract(tx.session, tx.owner_id, inp.contract_id, for_update=True)
    if await contract_store.supervisor_state(tx.session, owner_id=tx.owner_id, contract_id=contract.id):
        raise AlreadyExists(
            f"contract {contract.id} already has a supervisor; resume it instead",
            reason="SUPERVISOR_EXISTS",
            metadata={"contract": str(contract.id)},
        )
    task = await new_task(
        tx,
        name=derived_name(contract.name, prefix="supervisor of "),
        instructions=inp.instructions,
        kind=TaskKind.SUPERVISOR,
        contract_id=contract.id,
    )
    tx.session.add(SupervisorState(contract_id=contract.id, owner_id=tx.owner_id, task_id=task.id, create_time=tx.now))
    await tx.session.flush()
    tx.record(
        TimelineKind.SUPERVISOR_STARTED,
        f"supervisor of contract {contract.name!r} started",
        contract_id=contract.id,
        task_id=task.id,
        phase=contract.phase,
        data={"task_id": str(task.id)},
    )
    if inp.worktree is not None:
        task.branch = default_branch(task)
        await create_worktree(tx, tx.ws, task, inp.worktree)
    return Started(view=ContractView(contract=contract, supervisor_task_id=task.id), task=task)


class ResumeMode(StrEnum):
    CONTINUE = "continue"
    RESTART_PHASE = "restart_phase"
    FROM_CHECKPOINT = "from_checkpoint"


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeSupervisorInput:
    contract_id: uuid.UUID
    mode: ResumeMode
    checkpoint_id: uuid.UUID | None = None
    rewind_code: bool = False


@dataclass(frozen=True)
class SupervisorResumed:
    task: Task
    phase: str
    previous_status: str
    last_activity_time: datetime
    snapshot: ConversationSnapshot | None
    checkpoint: TaskCheckpoint | None
    safety: TaskCheckpoint | None


async def resume_supervisor(tx: Tx, inp: ResumeSupervisorInput) -> SupervisorResumed:
    """Put the supervisor back to pending with the context `mode` asks for (see `refuse_unless_resumable`)."""
    contract = await load_contract(tx.session, tx.owner_id, inp.contract_id)
    state = await contract_store.supervisor_state(tx.session, owner_id=tx.owner_id, contract_id=contract.id)
    if state is None:
        raise NotFound(
            f"contract {contract.id} has no supervisor state: start the supervisor first",
            reason="NO_SUPERVISOR_STATE",
            metadata={"contract": str(contract.id)},
        )
    task = await load_task(tx.session, tx.owner_id, state.task_id, for_update=True)
    refuse_unless_resumable(task, as_is=inp.mode == ResumeMode.CONTINUE)
    last_activity = task.last_activity_time
    snapshot = target = safety = None
    if inp.mode == ResumeMode.RESTART_PHASE:
        snapshot = await conversation.take_snapshot(tx, task, SnapshotReason.RESTART_PHASE)
        assert task.conversation_id is not None
        await conversation.point_conversation(tx, task, version_id=task.conversation_id, count=0)
    elif inp.mode == ResumeMode.FROM_CHECKPOINT:
        assert inp.checkpoint_id is not None
        target = await load_checkpoint(tx, task, inp.checkpoint_id)
        code = await rewind_code(tx, tx.ws, task, target) if inp.rewind_code else None
        saved = await conversation.load_snapshot(tx, target.conversation_snapshot_id)
        snapshot = await conversation.rewind_to(tx, task, saved, SnapshotReason.REWIND)
        await record_rewind(tx, task, code)
        safety = code.safety if code else None
    previous = back_to_pending(tx, task)
    tx.record(
        TimelineKind.SUPERVISOR_RESUMED,
        f"supervisor of contract {contract.name!r} resumed ({inp.mode.value})",
        contract_id=contract.id,
        task_id=task.id,
        phase=contract.phase,
        data={
            "mode": inp.mode.value,
            "previous_status": previous,
            "message_count": task.message_count,
            "checkpoint_id": str(target.id) if target else None,
            "code_rewound": safety is not None,
        },
    )
    return SupervisorResumed(
        task=task,
        phase=contract.phase,
        previous_status=previous,
        last_activity_time=last_activity,
        snapshot=snapshot,
        checkpoint=target,
        safety=safety,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RewindConversationInput:
    task_id: uuid.UUID | None = None
    contract_id: uuid.UUID | None = None
    to_message_index: int | None = None
    by_message_count: int | None = None
    expected_message_count: int | None = None
    rewind_code: bool = False


@dataclass(frozen=True)
class ConversationRewound:
    task: Task
    removed: int
    snapshot: ConversationSnapshot
    code_checkpoint: TaskCheckpoint | None
    safety: TaskCheckpoint | None
    code_not_rewound_reason: str


def _check_expected(task: Task, expected: int | None) -> None:
    if expected is not None and expected != task.message_count:
        raise Aborted(
            f"conversation of task {task.id} has {task.message_count} messages, not {expected}",
            reason="CONVERSATION_CHANGED",
            metadata={"task": str(task.id), "message_count": str(task.message_count), "expected": str(expected)},
        )


def _kept(count: int, inp: RewindConversationInput) -> int:
    """How many messages a rewind keeps; out-of-range points are INVALID_ARGUMENT."""
    if inp.to_message_index is not None:
        if not 0 <= inp.to_message_index < count:
            raise InvalidArgument.of("to_message_index", f"must be between 0 and {count - 1}")
        return inp.to_message_index + 1
    removed = 1 if inp.by_message_count is None else inp.by_message_count
    field = "by_message_count"
    if not 1 <= removed <= count:
        raise InvalidArgument.of(field, f"must be between 1 and {count} (the conversation's length)")
    return count - removed


async def rewind_conversation(tx: Tx, inp: RewindConversationInput) -> ConversationRewound:
    """Rewind a conversation in O(1); the removed messages stay in a snapshot that restores them."""
    task = await conversation_task(tx.session, tx.owner_id, task_id=inp.task_id, contract_id=inp.contract_id)
    refuse_if_running(task)
    _check_expected(task, inp.expected_message_count)
    keep = _kept(task.message_count, inp)
    code_checkpoint = safety = None
    reason = ""
    code = None
    if inp.rewind_code:
        if not task.placement:
            reason = "the task has no worktree"
        else:
            # A safety checkpoint holds code the user rewound away from, not the code at that message.
            code_checkpoint = await checkpoints.newest_at_or_before(
                tx.session,
                owner_id=tx.owner_id,
                task_id=task.id,
                message_count=keep,
                excluded_kinds=(CheckpointKind.SAFETY,),
            )
            if code_checkpoint is None:
                reason = f"no checkpoint was taken at or before message {keep}"
            else:
                code = await rewind_code(tx, tx.ws, task, code_checkpoint)
                safety = code.safety
    removed = task.message_count - keep
    snapshot = await conversation.take_snapshot(tx, task, SnapshotReason.REWIND)
    assert task.conversation_id is not None
    await conversation.point_conversation(tx, task, version_id=task.conversation_id, count=keep)
    await record_rewind(tx, task, code)
    tx.record(
        TimelineKind.CONVERSATION_REWOUND,
        f"conversation of task {task.name!r} rewound by {removed} message(s)",
        contract_id=task.contract_id,
        task_id=task.id,
        data={
            "messages_removed": removed,
            "new_message_count": keep,
            "snapshot_id": str(snapshot.id),
            "code_checkpoint_id": str(code_checkpoint.id) if safety and code_checkpoint else None,
        },
    )
    return ConversationRewound(
        task=task,
        removed=removed,
        snapshot=snapshot,
        code_checkpoint=code_checkpoint if safety else None,
        safety=safety,
        code_not_rewound_reason=reason,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RestoreConversationInput:
    snapshot_id: uuid.UUID
    expected_message_count: int | None = None


@dataclass(frozen=True)
class ConversationRestored:
    task: Task
    # The conversation the restore replaced, to undo it with.
    previous_snapshot: ConversationSnapshot


async def restore_conversation(tx: Tx, inp: RestoreConversationInput) -> ConversationRestored:
    """Bring back a snapshot's conversation; the replaced one is snapshotted so this can be undone too."""
    saved = await conversation.load_snapshot(tx, inp.snapshot_id)
    task = await load_task(tx.session, tx.owner_id, saved.task_id, for_update=True)
    refuse_if_running(task)
    _check_expected(task, inp.expected_message_count)
    previous = await conversation.rewind_to(tx, task, saved, SnapshotReason.RESTORE)
    tx.record(
        TimelineKind.CONVERSATION_RESTORED,
        f"conversation of task {task.name!r} restored to {saved.message_count} message(s)",
        contract_id=task.contract_id,
        task_id=task.id,
        data={"snapshot_id": str(saved.id), "previous_snapshot_id": str(previous.id)},
    )
    return ConversationRestored(task=task, previous_snapshot=previous)
