"""What daemons record while a task runs: task events and conversation messages.

Both writes are fenced by the lease of the daemon that sends them (see `work.fence`), checked under
the task's row lock before anything is written.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.contracts import load_contract
from makima.server.domain.enums import MessageRole, TaskEventKind, TimelineKind
from makima.server.domain.errors import Aborted, NotFound
from makima.server.domain.runtime import Caller, Tx
from makima.server.domain.tasks import load_task
from makima.server.domain.work import Lease, fence
from makima.server.store import contracts as contract_store
from makima.server.store import conversations, events
from makima.server.store.models import Task


@dataclass(frozen=True)
class NewEvent:
    sequence: int
    kind: TaskEventKind
    text: str = ""
    data: dict[str, Any] | None = None
    event_time: datetime | None = None


@dataclass(frozen=True)
class EventsSummary:
    """The highest stored sequence of a task and the runs of missing sequences below it."""

    last_sequence: int
    gaps: list[tuple[int, int]]


@dataclass(frozen=True)
class EventsRecorded:
    """Outcome of one batch: how many events were new and how many were resends, and the task's summary."""

    stored: int
    duplicates: int
    summary: EventsSummary


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordTaskEventsInput:
    task_id: uuid.UUID
    batch: list[NewEvent]
    # The sender's lease on the task; None for a tool (see work.fence).
    lease: Lease | None = None


async def record_task_events(tx: Tx, inp: RecordTaskEventsInput) -> EventsRecorded:
    """Store a batch of events once each with one timeline event, or nothing of it.

    A resent sequence is a duplicate when its content equals what is stored, and EVENT_CONFLICT when
    it differs: the insert is one statement that skips stored sequences, and only the skipped ones are
    read back to compare, so a batch of new events costs no extra query.
    """
    task = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    fence(task, inp.lease, tx.now)
    batch = inp.batch
    first = _first_of_each_sequence(task.id, batch)
    stored = await events.insert_new(
        tx.session,
        owner_id=tx.owner_id,
        task_id=task.id,
        rows=[
            events.EventRow(
                sequence=e.sequence, kind=e.kind.value, text=e.text, data=e.data, event_time=e.event_time or tx.now
            )
            for e in first.values()
        ],
        now=tx.now,
    )
    resent = first.keys() - set(stored.sequences)
    if resent:
        for row in await events.contents(tx.session, owner_id=tx.owner_id, task_id=task.id, sequences=resent):
            kept = NewEvent(
                sequence=row.sequence,
                kind=TaskEventKind(row.kind),
                text=row.text,
                data=row.data,
                event_time=row.event_time,
            )
            _check_resend(task.id, first[row.sequence], kept)
    new = stored.sequences
    if new:
        stored_now = set(new)
        kinds = dict(Counter(e.kind.value for e in batch if e.sequence in stored_now))
        tx.record(
            TimelineKind.TASK_EVENTS_RECORDED,
            f"{len(new)} event(s) recorded for task {task.name!r}",
            contract_id=task.contract_id,
            task_id=task.id,
            data={"count": len(new), "first_sequence": min(new), "last_sequence": max(new), "kinds": kinds},
        )
    summary = await _summary(tx.session, tx.owner_id, task.id, stored.event_count, stored.last_sequence)
    return EventsRecorded(stored=len(new), duplicates=len(batch) - len(new), summary=summary)


async def _summary(
    session: AsyncSession, owner_id: uuid.UUID, task_id: uuid.UUID, event_count: int, last_sequence: int
) -> EventsSummary:
    """From the task's counters: sequences start at 1, so there are gaps only when fewer are stored than the last."""
    has_gaps = event_count < last_sequence
    gaps = await events.gaps(session, owner_id=owner_id, task_id=task_id) if has_gaps else []
    return EventsSummary(last_sequence=last_sequence, gaps=gaps)


def _first_of_each_sequence(task_id: uuid.UUID, batch: list[NewEvent]) -> dict[int, NewEvent]:
    """The batch by sequence; a sequence repeated in the batch must repeat the same event."""
    first: dict[int, NewEvent] = {}
    for e in batch:
        seen = first.setdefault(e.sequence, e)
        if seen is not e:
            _check_resend(task_id, e, seen)
    return first


def _check_resend(task_id: uuid.UUID, resent: NewEvent, stored: NewEvent) -> None:
    """Refuse a resend whose content differs from the event already stored (or first in the batch).

    The event time is compared only when the resend gives one: without it the service stamped the
    first send with its own clock, which no resend can repeat.
    """
    differs = [
        name
        for name, same in (
            ("kind", stored.kind == resent.kind),
            ("text", stored.text == resent.text),
            ("data", stored.data == resent.data),
            ("event_time", resent.event_time is None or stored.event_time == resent.event_time),
        )
        if not same
    ]
    if differs:
        raise Aborted(
            f"event {resent.sequence} of task {task_id} was already recorded with another {', '.join(differs)}: "
            "a resend must repeat the event unchanged (nothing of this batch was written)",
            reason="EVENT_CONFLICT",
            metadata={"task": str(task_id), "sequence": str(resent.sequence), "fields": ",".join(differs)},
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SummarizeTaskEventsInput:
    task_id: uuid.UUID


async def summarize_task_events(caller: Caller, inp: SummarizeTaskEventsInput) -> EventsSummary:
    """The highest stored sequence of a task and the gaps below it."""
    async with caller.read() as session:
        task = await load_task(session, caller.owner_id, inp.task_id)
        return await _summary(session, caller.owner_id, task.id, task.event_count, task.last_event_sequence)


@dataclass(frozen=True)
class NewMessage:
    role: MessageRole
    content: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AppendMessagesInput:
    """Messages for the conversation of `task_id`, or of the supervisor of `contract_id`."""

    expected_next_index: int
    messages: list[NewMessage]
    task_id: uuid.UUID | None = None
    contract_id: uuid.UUID | None = None
    # The sender's lease on the conversation's task; None for a tool (see work.fence).
    lease: Lease | None = None


@dataclass(frozen=True)
class MessagesAppended:
    task_id: uuid.UUID
    first_index: int
    next_index: int


async def conversation_task(
    session: AsyncSession,
    owner_id: uuid.UUID,
    *,
    task_id: uuid.UUID | None,
    contract_id: uuid.UUID | None,
    lock: bool = True,
) -> Task:
    """The task owning a conversation named by task, or by contract (its supervisor)."""
    if task_id is not None:
        return await load_task(session, owner_id, task_id, for_update=lock)
    assert contract_id is not None
    await load_contract(session, owner_id, contract_id)
    state = await contract_store.supervisor_state(session, owner_id=owner_id, contract_id=contract_id)
    if state is None:
        raise NotFound(
            f"contract {contract_id} has no supervisor: start it first",
            reason="NO_SUPERVISOR_STATE",
            metadata={"contract": str(contract_id)},
        )
    return await load_task(session, owner_id, state.task_id, for_update=lock)


async def append_messages(tx: Tx, inp: AppendMessagesInput) -> MessagesAppended:
    """Append at `expected_next_index`, or refuse (ABORTED, nothing written) if the conversation moved."""
    task = await conversation_task(tx.session, tx.owner_id, task_id=inp.task_id, contract_id=inp.contract_id)
    fence(task, inp.lease, tx.now)
    if inp.expected_next_index != task.message_count:
        raise Aborted(
            f"conversation of task {task.id} has {task.message_count} messages, "
            f"not {inp.expected_next_index}: reload it and retry",
            reason="CONVERSATION_CHANGED",
            metadata={
                "task": str(task.id),
                "message_count": str(task.message_count),
                "expected_next_index": str(inp.expected_next_index),
            },
        )
    assert task.conversation_id is not None
    first = task.message_count
    await conversations.append(
        tx.session,
        owner_id=tx.owner_id,
        task_id=task.id,
        conversation_id=task.conversation_id,
        first=first,
        messages=[
            conversations.MessageRow(role=m.role.value, content=m.content, meta=m.metadata) for m in inp.messages
        ],
        now=tx.now,
    )
    next_index = first + len(inp.messages)
    tx.record(
        TimelineKind.MESSAGES_APPENDED,
        f"{len(inp.messages)} message(s) appended to task {task.name!r}",
        contract_id=task.contract_id,
        task_id=task.id,
        data={"count": len(inp.messages), "first_index": first, "next_index": next_index},
    )
    return MessagesAppended(task_id=task.id, first_index=first, next_index=next_index)
