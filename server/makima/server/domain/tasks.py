"""Task use cases: create and read."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.contracts import load_contract
from makima.server.domain.enums import TaskKind, TimelineKind
from makima.server.domain.errors import NotFound
from makima.server.domain.runtime import Caller, Tx
from makima.server.domain.worktrees import WorktreeRequest, create_worktree, default_branch
from makima.server.store import conversations
from makima.server.store import tasks as store
from makima.server.store.models import Task


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


# The longest task name the tasks table holds (makima.v1 declares the same bound on every name field).
NAME_LENGTH: int = Task.__table__.c.name.type.length  # type: ignore[attr-defined]


def derived_name(source: str, *, prefix: str = "", suffix: str = "") -> str:
    """A name made from another (e.g. "<name> (fork)"), `source` shortened so that the whole still fits."""
    return prefix + source[: NAME_LENGTH - len(prefix) - len(suffix)] + suffix


async def load_task(
    session: AsyncSession, owner_id: uuid.UUID, task_id: uuid.UUID, *, for_update: bool = False
) -> Task:
    """The owner's task, or NotFound (also for another owner's task)."""
    task = await store.get(session, owner_id=owner_id, task_id=task_id, for_update=for_update)
    if task is None:
        raise NotFound.resource("task", task_id)
    return task


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
