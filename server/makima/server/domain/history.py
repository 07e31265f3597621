"""Read use cases: timeline, contract history, conversations, task events, checkpoints, lineage.

Every list is a keyset page: the caller passes the key of the last item it saw, and a page costs the
same at the start and a million items in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.contracts import ContractView, load_contract
from makima.server.domain.errors import NotFound
from makima.server.domain.recording import conversation_task
from makima.server.domain.runtime import Principal, Runtime
from makima.server.domain.tasks import load_task
from makima.server.store import checkpoints, conversations, events, timeline
from makima.server.store import contracts as contract_store
from makima.server.store import tasks as task_store
from makima.server.store.checkpoints import NewestKey
from makima.server.store.conversations import StoredMessage
from makima.server.store.events import StoredTaskEvent
from makima.server.store.models import ConversationSnapshot, Task, TaskCheckpoint
from makima.server.store.timeline import StoredHistoryEvent, TimelineFilter

T = TypeVar("T")
MAX_LINEAGE = 10_000


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; `more` says whether another page follows."""

    items: list[T]
    more: bool


def _page(rows: list[T], limit: int) -> Page[T]:
    return Page(items=rows[:limit], more=len(rows) > limit)


async def check_timeline_scope(session: AsyncSession, owner_id: uuid.UUID, where: TimelineFilter) -> None:
    """NotFound when the filter names another owner's (or an unknown) contract or task."""
    if where.contract_id is not None:
        await load_contract(session, owner_id, where.contract_id)
    if where.task_id is not None:
        await load_task(session, owner_id, where.task_id)


async def list_timeline(
    rt: Runtime, principal: Principal, *, where: TimelineFilter, after: int, limit: int
) -> Page[StoredHistoryEvent]:
    async with rt.read() as session:
        await check_timeline_scope(session, principal.owner_id, where)
        rows = await timeline.page(session, owner_id=principal.owner_id, where=where, after=after, limit=limit + 1)
    return _page(rows, limit)


@dataclass(frozen=True)
class PhaseSpan:
    phase: str
    start_time: datetime
    end_time: datetime | None


@dataclass(frozen=True)
class ContractHistory:
    view: ContractView
    phases: list[PhaseSpan]
    events: Page[StoredHistoryEvent]


async def contract_history(
    rt: Runtime, principal: Principal, contract_id: uuid.UUID, *, where: TimelineFilter, after: int, limit: int
) -> ContractHistory:
    """A contract, the phases it went through, and a page of its (and its tasks') timeline."""
    owner = principal.owner_id
    async with rt.read() as session:
        contract = await load_contract(session, owner, contract_id)
        state = await contract_store.supervisor_state(session, owner_id=owner, contract_id=contract_id)
        moves = await timeline.contract_phase_events(session, owner_id=owner, contract_id=contract_id)
        scoped = TimelineFilter(
            contract_id=contract_id,
            kinds=where.kinds,
            phase=where.phase,
            start_time=where.start_time,
            end_time=where.end_time,
        )
        rows = await timeline.page(session, owner_id=owner, where=scoped, after=after, limit=limit + 1)
    phases = [
        PhaseSpan(phase=m.phase or "", start_time=m.create_time, end_time=nxt.create_time if nxt else None)
        for m, nxt in zip(moves, [*moves[1:], None], strict=True)
    ]
    return ContractHistory(
        view=ContractView(contract=contract, supervisor_task_id=state.task_id if state else None),
        phases=phases,
        events=_page(rows, limit),
    )


@dataclass(frozen=True)
class ConversationPage:
    task_id: uuid.UUID
    message_count: int
    messages: Page[StoredMessage]


async def conversation(
    rt: Runtime,
    principal: Principal,
    *,
    task_id: uuid.UUID | None = None,
    contract_id: uuid.UUID | None = None,
    snapshot_id: uuid.UUID | None = None,
    start: int,
    limit: int,
) -> ConversationPage:
    """Messages [start, start + limit) of a task's (or supervisor's) conversation or of a snapshot of it."""
    owner = principal.owner_id
    async with rt.read() as session:
        task = await conversation_task(session, owner, task_id=task_id, contract_id=contract_id, lock=False)
        version, count = task.conversation_id, task.message_count
        if snapshot_id is not None:
            snapshot = await checkpoints.get_snapshot(session, owner_id=owner, snapshot_id=snapshot_id)
            if snapshot is None or snapshot.task_id != task.id:
                raise NotFound.resource("snapshot", snapshot_id)
            version, count = snapshot.conversation_id, snapshot.message_count
        assert version is not None
        rows = await conversations.read(
            session, owner_id=owner, conversation_id=version, count=count, start=start, limit=limit
        )
    return ConversationPage(task_id=task.id, message_count=count, messages=Page(rows, start + len(rows) < count))


async def list_snapshots(
    rt: Runtime, principal: Principal, task_id: uuid.UUID, *, before: NewestKey | None, limit: int
) -> Page[ConversationSnapshot]:
    async with rt.read() as session:
        task = await load_task(session, principal.owner_id, task_id)
        rows = await checkpoints.snapshot_page(
            session, owner_id=principal.owner_id, task_id=task.id, before=before, limit=limit + 1
        )
    return _page(rows, limit)


async def list_checkpoints(
    rt: Runtime, principal: Principal, task_id: uuid.UUID, *, before: NewestKey | None, limit: int
) -> Page[TaskCheckpoint]:
    async with rt.read() as session:
        task = await load_task(session, principal.owner_id, task_id)
        rows = await checkpoints.checkpoint_page(
            session, owner_id=principal.owner_id, task_id=task.id, before=before, limit=limit + 1
        )
    return _page(rows, limit)


async def list_task_events(
    rt: Runtime,
    principal: Principal,
    task_id: uuid.UUID,
    *,
    kinds: tuple[str, ...],
    start_time: datetime | None,
    end_time: datetime | None,
    after: int,
    limit: int,
) -> Page[StoredTaskEvent]:
    async with rt.read() as session:
        task = await load_task(session, principal.owner_id, task_id)
        rows = await events.page(
            session,
            owner_id=principal.owner_id,
            task_id=task.id,
            after=after,
            limit=limit + 1,
            where=events.TaskEventFilter(kinds=kinds, start_time=start_time, end_time=end_time),
        )
    return _page(rows, limit)


async def list_contracts(
    rt: Runtime, principal: Principal, *, statuses: tuple[str, ...], before: NewestKey | None, limit: int
) -> Page[ContractView]:
    async with rt.read() as session:
        rows = await contract_store.page(
            session, owner_id=principal.owner_id, statuses=statuses, before=before, limit=limit + 1
        )
        page = _page(rows, limit)
        supervisors = await contract_store.supervisor_tasks(
            session, owner_id=principal.owner_id, contract_ids=[c.id for c in page.items]
        )
    return Page([ContractView(c, supervisors.get(c.id)) for c in page.items], page.more)


async def list_tasks(
    rt: Runtime,
    principal: Principal,
    *,
    contract_id: uuid.UUID | None,
    statuses: tuple[str, ...],
    before: NewestKey | None,
    limit: int,
) -> Page[Task]:
    async with rt.read() as session:
        if contract_id is not None:
            await load_contract(session, principal.owner_id, contract_id)  # NotFound for another owner's
        rows = await task_store.page(
            session,
            owner_id=principal.owner_id,
            contract_id=contract_id,
            statuses=statuses,
            before=before,
            limit=limit + 1,
        )
    return _page(rows, limit)


@dataclass(frozen=True)
class LineageNode:
    task: Task
    parent_task_id: uuid.UUID | None
    relation: str  # root | fork | continuation | subtask
    depth: int


def _lineage_parent(task: Task) -> tuple[uuid.UUID | None, str]:
    if task.forked_from_task_id is not None:
        return task.forked_from_task_id, "fork"
    if task.continued_from_task_id is not None:
        return task.continued_from_task_id, "continuation"
    if task.parent_task_id is not None:
        return task.parent_task_id, "subtask"
    return None, "root"


async def task_lineage(rt: Runtime, principal: Principal, task_id: uuid.UUID) -> list[LineageNode]:
    """The whole fork / continuation / sub-task tree of a task, parents before children."""
    owner = principal.owner_id
    async with rt.read() as session:
        root = await load_task(session, owner, task_id)
        seen = {root.id}
        while (up := _lineage_parent(root)[0]) is not None and up not in seen:
            seen.add(up)
            root = await load_task(session, owner, up)
        nodes = [LineageNode(task=root, parent_task_id=None, relation="root", depth=0)]
        known = {root.id}
        frontier = {root.id}
        depth = 0
        while frontier and len(nodes) < MAX_LINEAGE:
            depth += 1
            children = await task_store.related(session, owner_id=owner, task_ids=frontier)
            frontier = set()
            for child in sorted(children, key=lambda t: (t.create_time, t.id)):
                parent, relation = _lineage_parent(child)
                if child.id in known or parent not in known:
                    continue
                known.add(child.id)
                frontier.add(child.id)
                nodes.append(LineageNode(task=child, parent_task_id=parent, relation=relation, depth=depth))
    return nodes
