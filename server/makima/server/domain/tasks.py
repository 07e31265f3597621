"""Task use cases (create, read) and the rules of a task's state that every use case shares."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.contracts import load_contract
from makima.server.domain.enums import TaskKind, TaskStatus, TimelineKind
from makima.server.domain.errors import FailedPrecondition, NotFound
from makima.server.domain.runtime import Caller, Tx
from makima.server.domain.worktrees import WorktreeRequest, create_worktree, default_branch
from makima.server.store import conversations
from makima.server.store import tasks as store
from makima.server.store.models import TASK_NAME_LENGTH, Task


@dataclass(frozen=True, kw_only=True, slots=True)
class CreateTaskInput:
    name: str
    instructions: str = ""
    contract_id: uuid.UUID | None = None
    parent_task_id: uuid.UUID | None = None
    worktree: WorktreeRequest | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class GetTaskInput:
    task_id: uuid.UUID


def derived_name(source: str, *, prefix: str = "", suffix: str = "") -> str:
    """A name made from another (e.g. "<name> (fork)"), `source` shortened so that the whole still fits."""
    return prefix + source[: TASK_NAME_LENGTH - len(prefix) - len(suffix)] + suffix


async def load_task(
    session: AsyncSession, owner_id: uuid.UUID, task_id: uuid.UUID, *, for_update: bool = False
) -> Task:
    """The owner's task, or NotFound (also for another owner's task)."""
    task = await store.get(session, owner_id=owner_id, task_id=task_id, for_update=for_update)
    if task is None:
        raise NotFound.resource("task", task_id)
    return task


def refuse_if_running(task: Task) -> None:
    """The one check that a task is not running on a daemon, made by every change to a task's code or
    conversation from outside its run (FAILED_PRECONDITION ALREADY_RUNNING)."""
    if task.status == TaskStatus.RUNNING:
        raise FailedPrecondition(
            f"task {task.id} is running on a daemon; stop it first",
            reason="ALREADY_RUNNING",
            metadata={"task": str(task.id), "daemon": str(task.daemon_id or "")},
        )


def refuse_unless_resumable(task: Task, *, as_is: bool) -> None:
    """The one rule of every resume, of a task or a supervisor.

    A resume that keeps the task as it is (ResumeTask, ResumeSupervisor CONTINUE) needs a task that
    stopped before it finished: INTERRUPTED or FAILED. A pending task is already waiting for a
    daemon, a completed one has nothing left to do. A resume that first goes back to a point of the
    history (a checkpoint, the start of the phase) needs only a task that is not running.
    """
    refuse_if_running(task)
    if as_is and task.status not in (TaskStatus.INTERRUPTED, TaskStatus.FAILED):
        raise FailedPrecondition(
            f"task {task.id} is {task.status}; only interrupted or failed tasks resume as they are "
            "(resume from a checkpoint to go back)",
            reason="NOT_RESUMABLE",
            metadata={"task": str(task.id), "status": task.status},
        )


def back_to_pending(tx: Tx, task: Task) -> str:
    """Put a stopped task back in the queue for the next daemon to claim; returns the status it had.

    The one way every resume does it: no lease is left (the claim gives a new one) and no status
    message; `daemon_id` still names the daemon that last ran the task.
    """
    previous = task.status
    task.status = TaskStatus.PENDING.value
    task.lease_expire_time = None
    task.status_message = ""
    task.version += 1
    task.update_time = tx.now
    return previous


async def new_task(
    tx: Tx,
    *,
    name: str,
    instructions: str,
    kind: TaskKind,
    contract_id: uuid.UUID | None,
    conversation_from: tuple[uuid.UUID, int] | None = None,
    parent_task_id: uuid.UUID | None = None,
    forked_from_task_id: uuid.UUID | None = None,
    forked_from_checkpoint_id: uuid.UUID | None = None,
    forked_at_message_index: int | None = None,
    continued_from_task_id: uuid.UUID | None = None,
) -> Task:
    """Insert a pending task with a conversation of its own: empty, or the first n messages of a version."""
    task = Task(
        owner_id=tx.owner_id,
        contract_id=contract_id,
        name=name,
        instructions=instructions,
        kind=kind.value,
        create_time=tx.now,
        update_time=tx.now,
        last_activity_time=tx.now,
        parent_task_id=parent_task_id,
        forked_from_task_id=forked_from_task_id,
        forked_from_checkpoint_id=forked_from_checkpoint_id,
        forked_at_message_index=forked_at_message_index,
        continued_from_task_id=continued_from_task_id,
    )
    tx.session.add(task)
    await tx.session.flush()
    parent, count = conversation_from or (None, 0)
    version = await conversations.new_version(
        tx.session, owner_id=tx.owner_id, task_id=task.id, parent_conversation_id=parent, base_count=count
    )
    task.conversation_id = version.id
    task.message_count = count
    return task


async def create_task(tx: Tx, inp: CreateTaskInput) -> Task:
    """A pending task; with a worktree request, its worktree and first checkpoint too."""
    phase = None
    if inp.contract_id is not None:
        phase = (await load_contract(tx.session, tx.owner_id, inp.contract_id)).phase
    if inp.parent_task_id is not None:
        await load_task(tx.session, tx.owner_id, inp.parent_task_id)
    task = await new_task(
        tx,
        name=inp.name,
        instructions=inp.instructions,
        kind=TaskKind.WORKER,
        contract_id=inp.contract_id,
        parent_task_id=inp.parent_task_id,
    )
    if inp.worktree is not None:
        task.branch = default_branch(task)
    tx.record(
        TimelineKind.TASK_CREATED,
        f"task {task.name!r} created",
        contract_id=task.contract_id,
        task_id=task.id,
        phase=phase,
        data={"name": task.name, "kind": task.kind, "parent_task_id": _str(task.parent_task_id)},
    )
    if inp.worktree is not None:
        await create_worktree(tx, tx.ws, task, inp.worktree)
    return task


async def get_task(caller: Caller, inp: GetTaskInput) -> Task:
    async with caller.read() as session:
        return await load_task(session, caller.owner_id, inp.task_id)


def _str(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None
