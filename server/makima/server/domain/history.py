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
from makima.server.domain.runtime import Caller
from makima.server.domain.tasks import load_task
from makima.server.store import checkpoints, conversations, events, timeline
from makima.server.store import contracts as contract_store
from makima.server.store import tasks as task_store
from makima.server.store.checkpoints import NewestKey
from makima.server.store.conversations import StoredMessage
from makima.server.store.events import StoredTaskEvent, TaskEventFilter
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


@dataclass(frozen=True, kw_only=True, slots=True)
class ListTimelineInput:
    where: TimelineFilter
    # The cursor of the last event seen (0: from the start).
    after: int
    limit: int


async def list_timeline(caller: Caller, inp: ListTimelineInput) -> Page[StoredHistoryEvent]:
    async with caller.read() as session:
        await check_timeline_scope(session, caller.owner_id, inp.where)
        rows = await timeline.page(
            session, owner_id=caller.owner_id, where=inp.where, after=inp.after, limit=inp.limit + 1
        )
    return _page(rows, inp.limit)


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


@dataclass(frozen=True, kw_only=True, slots=True)
class ContractHistoryInput:
    contract_id: uuid.UUID
    # Which events of the contract's timeline (its contract_id is the contract's whatever it says).
    where: TimelineFilter
    after: int
    limit: int


async def contract_history(caller: Caller, inp: ContractHistoryInput) -> ContractHistory:
    """A contract, the phases it went through, and a page of its (and its tasks') timeline."""
    owner, contract_id, where, limit = caller.owner_id, inp.contract_id, inp.where, inp.limit
    async with caller.read() as session:
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
        rows = await timeline.page(session, owner_id=owner, where=scoped, after=inp.after, limit=limit + 1)
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


@dataclass(frozen=True, kw_only=True, slots=True)
class ConversationInput:
    """The conversation of `task_id`, or of the supervisor of `contract_id`; of its snapshot `snapshot_id` if set."""

    task_id: uuid.UUID | None = None
    contract_id: uuid.UUID | None = None
    snapshot_id: uuid.UUID | None = None
    start: int
    limit: int


async def conversation(caller: Caller, inp: ConversationInput) -> ConversationPage:
    """Messages [start, start + limit) of a task's (or supervisor's) conversation or of a snapshot of it."""
    owner, start = caller.owner_id, inp.start
    async with caller.read() as session:
        task = await conversation_task(session, owner, task_id=inp.task_id, contract_id=inp.contract_id, lock=False)
        version, count = task.conversation_id, task.message_count
        if inp.snapshot_id is not None:
            snapshot = await checkpoints.get_snapshot(session, owner_id=owner, snapshot_id=inp.snapshot_id)
            if snapshot is None or snapshot.task_id != task.id:
                raise NotFound.resource("snapshot", inp.snapshot_id)
            version, count = snapshot.conversation_id, snapshot.message_count
        assert version is not None
        rows = await conversations.read(
            session, owner_id=owner, conversation_id=version, count=count, start=start, limit=inp.limit
        )
    return ConversationPage(task_id=task.id, message_count=count, messages=Page(rows, start + len(rows) < count))


@dataclass(frozen=True, kw_only=True, slots=True)
class ListSnapshotsInput:
    task_id: uuid.UUID
    # The key of the last snapshot seen (None: from the newest).
    before: NewestKey | None
    limit: int


async def list_snapshots(caller: Caller, inp: ListSnapshotsInput) -> Page[ConversationSnapshot]:
    async with caller.read() as session:
        task = await load_task(session, caller.owner_id, inp.task_id)
        rows = await checkpoints.snapshot_page(
            session, owner_id=caller.owner_id, task_id=task.id, before=inp.before, limit=inp.limit + 1
        )
    return _page(rows, inp.limit)


@dataclass(frozen=True, kw_only=True, slots=True)
class ListCheckpointsInput:
    task_id: uuid.UUID
    # The key of the last checkpoint seen (None: from the newest).
    before: NewestKey | None
    limit: int


async def list_checkpoints(caller: Caller, inp: ListCheckpointsInput) -> Page[TaskCheckpoint]:
    async with caller.read() as session:
        task = await load_task(session, caller.owner_id, inp.task_id)
        rows = await checkpoints.checkpoint_page(
            session, owner_id=caller.owner_id, task_id=task.id, before=inp.before, limit=inp.limit + 1
        )
    return _page(rows, inp.limit)


@dataclass(frozen=True, kw_only=True, slots=True)
class ListTaskEventsInput:
    task_id: uuid.UUID
    where: TaskEventFilter
    # The sequence of the last event seen (0: from the first).
    after: int
    limit: int


async def list_task_events(caller: Caller, inp: ListTaskEventsInput) -> Page[StoredTaskEvent]:
    async with caller.read() as session:
        task = await load_task(session, caller.owner_id, inp.task_id)
        rows = await events.page(
            session, owner_id=caller.owner_id, task_id=task.id, after=inp.after, limit=inp.limit + 1, where=inp.where
        )
    return _page(rows, inp.limit)


@dataclass(frozen=True, kw_only=True, slots=True)
class ListContractsInput:
    # Empty: every status.
    statuses: tuple[str, ...] = ()
    before: NewestKey | None
    limit: int


async def list_contracts(caller: Caller, inp: ListContractsInput) -> Page[ContractView]:
    async with caller.read() as session:
        rows = await contract_store.page(
            session, owner_id=caller.owner_id, statuses=inp.statuses, before=inp.before, limit=inp.limit + 1
        )
        page = _page(rows, inp.limit)
        supervisors = await contract_store.supervisor_tasks(
            session, owner_id=caller.owner_id, contract_ids=[c.id for c in page.items]
        )
    return Page([ContractView(c, supervisors.get(c.id)) for c in page.items], page.more)


@dataclass(frozen=True, kw_only=True, slots=True)
class ListTasksInput:
    # None: the tasks of every contract, and those of none.
    contract_id: uuid.UUID | None = None
    statuses: tuple[str, ...] = ()
    before: NewestKey | None
    limit: int


async def list_tasks(caller: Caller, inp: ListTasksInput) -> Page[Task]:
    async with caller.read() as session:
        if inp.contract_id is not None:
            await load_contract(session, caller.owner_id, inp.contract_id)  # NotFound for another owner's
        rows = await task_store.page(
            session,
            owner_id=caller.owner_id,
            contract_id=inp.contract_id,
            statuses=inp.statuses,
            before=inp.before,
            limit=inp.limit + 1,
        )
    return _page(rows, inp.limit)


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


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskLineageInput:
    task_id: uuid.UUID


@dataclass(frozen=True)
class TaskLineage:
    """A lineage tree: its root first (depth 0), parents before children."""

    nodes: list[LineageNode]

    @property
    def root(self) -> Task:
        return self.nodes[0].task


async def task_lineage(caller: Caller, inp: TaskLineageInput) -> TaskLineage:
    """The whole fork / continuation / sub-task tree of a task, parents before children."""
    owner = caller.owner_id
    async with caller.read() as session:
        root = await load_task(session, owner, inp.task_id)
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
    return TaskLineage(nodes=nodes)
