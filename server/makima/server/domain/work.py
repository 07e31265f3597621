"""The daemon work loop: register, claim a pending task with a lease, keep the lease, report the end.

A daemon holds a task's lease while the task is RUNNING on it and `lease_expire_time` is still ahead.
A lease that ran out is not held any more even before the sweeper marks the task INTERRUPTED, so what
Heartbeat and ReportTaskStatus answer never depends on when the sweeper last ran.

Every claim bumps the task's `lease_epoch`; the pair (task, epoch) is the fencing token of that
claim's lease. A daemon's history writes carry it, so a daemon that went silent and lost the task
cannot write once another claim took over, even if its late write arrives first: `fence` checks the
token in the write's own transaction, under the task's row lock, before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.enums import TaskStatus, TimelineKind
from makima.server.domain.errors import FailedPrecondition, NotFound
from makima.server.domain.runtime import Caller, Tx
from makima.server.domain.tasks import load_task
from makima.server.store import branches as branch_records
from makima.server.store import conversations, events
from makima.server.store import work as store
from makima.server.store.conversations import StoredMessage
from makima.server.store.models import Daemon, Task, TaskBranch

# A claim carries at most the first 10,000 messages of the task's conversation, and stops earlier once
# their content passes 3 MiB so the answer stays under gRPC's default 4 MiB message limit (a claim the
# daemon cannot receive would strand the task until its lease ran out). When `task.message_count` is
# larger than the conversation received, the daemon reads the rest with HistoryService.GetTaskConversation.
MAX_CLAIM_MESSAGES = 10_000
MAX_CLAIM_CONTENT_BYTES = 3 * 1024 * 1024
FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.INTERRUPTED})
LEASE_EXPIRED = "lease expired"


@dataclass(frozen=True, kw_only=True, slots=True)
class RegisterDaemonInput:
    name: str
    hostname: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class HeartbeatInput:
    daemon_id: uuid.UUID
    task_ids: tuple[uuid.UUID, ...]
    lease: timedelta


@dataclass(frozen=True)
class LeaseRenewal:
    """The new lease end of the tasks still held, and the listed tasks the daemon must stop."""

    lease_expire_time: datetime
    lost_task_ids: list[uuid.UUID]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimTaskInput:
    daemon_id: uuid.UUID
    kinds: tuple[str, ...]
    lease: timedelta
    # Seconds to wait for a pending task, already bounded by the call's deadline.
    wait: float
    # Seconds between looks at the database while waiting, in case a wake-up was missed.
    recheck: float


@dataclass(frozen=True)
class Lease:
    """The fencing token of one claim: the task and the epoch the claim gave it."""

    task_id: uuid.UUID
    epoch: int


@dataclass(frozen=True)
class ClaimedTask:
    """A task now running on the claiming daemon, with what the daemon needs to run it."""

    task: Task
    phase: str | None
    conversation: list[StoredMessage]
    last_event_sequence: int
    lease: Lease
    # Branches recorded for a daemon-held task (CreateBranch), for the daemon to create.
    branches: list[TaskBranch]


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportTaskStatusInput:
    daemon_id: uuid.UUID
    task_id: uuid.UUID
    status: TaskStatus
    message: str = ""
    # None: a caller without a token, checked by daemon only (it cannot tell two claims apart).
    lease: Lease | None = None


async def load_daemon(session: AsyncSession, owner_id: uuid.UUID, daemon_id: uuid.UUID) -> Daemon:
    """The owner's daemon, or NotFound (also for another owner's daemon)."""
    daemon = await store.get_daemon(session, owner_id=owner_id, daemon_id=daemon_id)
    if daemon is None:
        raise NotFound.resource("daemon", daemon_id)
    return daemon


async def register_daemon(tx: Tx, inp: RegisterDaemonInput) -> Daemon:
    daemon = Daemon(
        owner_id=tx.owner_id, name=inp.name, hostname=inp.hostname, create_time=tx.now, last_heartbeat_time=tx.now
    )
    tx.session.add(daemon)
    await tx.session.flush()
    tx.record(
        TimelineKind.DAEMON_REGISTERED,
        f"daemon {daemon.name!r} registered",
        data={"daemon_id": str(daemon.id), "name": daemon.name, "hostname": daemon.hostname},
    )
    return daemon


async def heartbeat(tx: Tx, inp: HeartbeatInput) -> LeaseRenewal:
    """Record that the daemon is alive and move the end of the leases it still holds.

    Renewing a lease changes neither the task's version nor its timeline: it is the same lease.
    """
    daemon = await load_daemon(tx.session, tx.owner_id, inp.daemon_id)
    daemon.last_heartbeat_time = tx.now
    until = tx.now + inp.lease
    held = await store.extend_leases(
        tx.session, owner_id=tx.owner_id, daemon_id=daemon.id, task_ids=set(inp.task_ids), now=tx.now, until=until
    )
    lost = [task_id for task_id in dict.fromkeys(inp.task_ids) if task_id not in held]
    return LeaseRenewal(lease_expire_time=until, lost_task_ids=lost)


async def claim_task(caller: Caller, inp: ClaimTaskInput) -> ClaimedTask | None:
    """Hand the owner's oldest pending task to the daemon, waiting up to `inp.wait` for one to appear.

    Every commit of the owner (in this process, or in another one through LISTEN/NOTIFY) wakes the
    wait, so a task created or resumed meanwhile is claimed at once; the database is re-checked every
    `inp.recheck` seconds in case a wake-up was missed. The first look is the claim itself, so a busy queue
    costs one transaction per claim; later looks only read, and the write transaction (which on SQLite
    excludes every other writer) starts once a pending task is seen.
    """
    hub = caller.rt.hub
    deadline = time.monotonic() + inp.wait
    take = functools.partial(_take_next, daemon_id=inp.daemon_id, kinds=inp.kinds, lease=inp.lease)
    with hub.subscribe(caller.owner_id) as (wake, _tail):
        pending = True
        while True:
            if pending:
                claimed = await caller.mutate(take)
                if claimed is not None:
                    return claimed
            left = deadline - time.monotonic()
            if left <= 0 or hub.closing.is_set():
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(inp.recheck, left))
            wake.clear()  # before looking: a commit during the look ends the next wait at once
            async with caller.read() as session:
                pending = await store.has_pending(session, owner_id=caller.owner_id, kinds=inp.kinds)


async def _take_next(tx: Tx, *, daemon_id: uuid.UUID, kinds: tuple[str, ...], lease: timedelta) -> ClaimedTask | None:
    """One claim attempt: None when every pending task is gone or being claimed by another daemon."""
    daemon = await load_daemon(tx.session, tx.owner_id, daemon_id)
    task = await store.lock_next_pending(tx.session, owner_id=tx.owner_id, kinds=kinds)
    if task is None:
        return None
    phase = _phase(await _phases(tx.session, tx.owner_id, [task]), task)
    _set_status(
        tx,
        task,
        TaskStatus.RUNNING,
        summary=f"task {task.name!r} claimed by daemon {daemon.name!r}",
        phase=phase,
        daemon_id=daemon.id,
        lease_expire_time=tx.now + lease,
    )
    task.lease_epoch += 1
    await tx.session.flush()
    return ClaimedTask(
        task=task,
        phase=phase,
        conversation=await _conversation(tx.session, task),
        last_event_sequence=await events.last_sequence(tx.session, owner_id=tx.owner_id, task_id=task.id),
        lease=Lease(task_id=task.id, epoch=task.lease_epoch),
        branches=await branch_records.branches_of(tx.session, owner_id=tx.owner_id, task_id=task.id),
    )


async def _conversation(session: AsyncSession, task: Task) -> list[StoredMessage]:
    """The first messages of the task's current conversation, within the claim's bounds."""
    assert task.conversation_id is not None
    rows = await conversations.read(
        session,
        owner_id=task.owner_id,
        conversation_id=task.conversation_id,
        count=task.message_count,
        start=0,
        limit=MAX_CLAIM_MESSAGES,
    )
    size = 0
    for i, row in enumerate(rows):
        size += len(row.content.encode())
        if size > MAX_CLAIM_CONTENT_BYTES and i > 0:
            return rows[:i]
    return rows


async def report_task_status(tx: Tx, inp: ReportTaskStatusInput) -> Task:
    """End the daemon's run of a task (completed, failed or interrupted) and release its lease."""
    daemon = await load_daemon(tx.session, tx.owner_id, inp.daemon_id)
    task = await load_task(tx.session, tx.owner_id, inp.task_id, for_update=True)
    if inp.lease is not None:
        fence(task, inp.lease, tx.now, daemon_id=daemon.id)
    elif not _holds_lease(task, daemon.id, tx.now):
        raise FailedPrecondition(
            f"task {task.id} is not running on daemon {daemon.id}: its lease ended or was never held",
            reason="LEASE_NOT_HELD",
            metadata={"task": str(task.id), "daemon": str(daemon.id)},
        )
    _set_status(
        tx,
        task,
        inp.status,
        summary=f"task {task.name!r} {inp.status.value}",
        phase=_phase(await _phases(tx.session, tx.owner_id, [task]), task),
        message=inp.message,
    )
    await tx.session.flush()
    return task


async def interrupt_expired(tx: Tx, *, limit: int) -> int:
    """Mark up to `limit` of the owner's running tasks whose lease ran out INTERRUPTED; returns how many."""
    expired = await store.lock_expired(tx.session, owner_id=tx.owner_id, now=tx.now, limit=limit)
    phases = await _phases(tx.session, tx.owner_id, expired)
    for task in expired:
        _set_status(
            tx,
            task,
            TaskStatus.INTERRUPTED,
            summary=f"task {task.name!r} interrupted: {LEASE_EXPIRED}",
            phase=_phase(phases, task),
            message=LEASE_EXPIRED,
        )
    await tx.session.flush()
    return len(expired)


def fence(task: Task, lease: Lease | None, now: datetime, *, daemon_id: uuid.UUID | None = None) -> None:
    """Refuse a history write to a locked `task` unless the lease rules allow it; nothing is written yet.

    With a token the write needs that very lease (and, given `daemon_id`, held by that daemon):
    else LEASE_LOST. Without one (a tool) it needs that no daemon holds a lease: else LEASE_REQUIRED,
    so a tool never interleaves its writes with a live daemon's.
    """
    if lease is None:
        if _leased(task, now):
            raise FailedPrecondition(
                f"task {task.id} is running on daemon {task.daemon_id}: only the holder of its lease writes to it "
                "(send the lease_token of the claim)",
                reason="LEASE_REQUIRED",
                metadata={"task": str(task.id), "daemon": str(task.daemon_id)},
            )
        return
    why = _lost_because(task, lease, now, daemon_id)
    if why is not None:
        raise FailedPrecondition(
            f"task {task.id} is not leased under this token any more ({why}): stop working on it",
            reason="LEASE_LOST",
            metadata={"task": str(task.id), "status": task.status},
        )


def _lost_because(task: Task, lease: Lease, now: datetime, daemon_id: uuid.UUID | None) -> str | None:
    """Why `lease` is not held on `task`, or None while it is."""
    if lease.task_id != task.id:
        return "the token is a lease of another task"
    if lease.epoch != task.lease_epoch:
        return "the task was claimed again since"
    if task.status != TaskStatus.RUNNING:
        return f"the task is {task.status}"
    if not _leased(task, now):
        return "the lease ran out"
    if daemon_id is not None and task.daemon_id != daemon_id:
        return "the lease is another daemon's"
    return None


def _leased(task: Task, now: datetime) -> bool:
    """Whether some daemon holds a lease on the task: a lease that ran out is not held."""
    return task.status == TaskStatus.RUNNING and task.lease_expire_time is not None and task.lease_expire_time > now


def _holds_lease(task: Task, daemon_id: uuid.UUID, now: datetime) -> bool:
    return _leased(task, now) and task.daemon_id == daemon_id


def _set_status(
    tx: Tx,
    task: Task,
    status: TaskStatus,
    *,
    summary: str,
    phase: str | None,
    message: str = "",
    daemon_id: uuid.UUID | None = None,
    lease_expire_time: datetime | None = None,
) -> None:
    """Move a task to `status` with its timeline event; a lease is set only while it runs.

    `daemon_id` stays set after a run, naming the daemon that last ran the task.
    """
    previous = task.status
    task.status = status.value
    task.status_message = message
    if daemon_id is not None:
        task.daemon_id = daemon_id
    task.lease_expire_time = lease_expire_time
    task.version += 1
    task.update_time = tx.now
    task.last_activity_time = tx.now
    data = {"from": previous, "to": status.value, "daemon_id": str(task.daemon_id)}
    if message:
        data["message"] = message
    tx.record(
        TimelineKind.TASK_STATUS_CHANGED, summary, contract_id=task.contract_id, task_id=task.id, phase=phase, data=data
    )


async def _phases(session: AsyncSession, owner_id: uuid.UUID, tasks: Collection[Task]) -> dict[uuid.UUID, str]:
    """The current phase of each task's contract, by contract id."""
    ids = {t.contract_id for t in tasks if t.contract_id is not None}
    return await store.contract_phases(session, owner_id=owner_id, contract_ids=ids)


def _phase(phases: dict[uuid.UUID, str], task: Task) -> str | None:
    return phases.get(task.contract_id) if task.contract_id is not None else None
