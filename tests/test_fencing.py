"""Fenced daemon writes: a write under a lost lease changes nothing, a tool never writes over a live
daemon, and a resent event sequence must repeat the stored event (issue 10, part 3)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.helpers import Api, create_contract, create_task, fails
from tests.test_contracts import timeline_of
from tests.test_work import claim, get_task, heartbeat, register, report, wait_for_status

OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT
TOOL_CALL = resources_pb2.TASK_EVENT_KIND_TOOL_CALL
RUNNING = resources_pb2.TASK_STATUS_RUNNING
COMPLETED = resources_pb2.TASK_STATUS_COMPLETED
INTERRUPTED = resources_pb2.TASK_STATUS_INTERRUPTED
LOST = grpc.StatusCode.FAILED_PRECONDITION


def event(sequence: int, text: str, kind: int = OUTPUT, **kw: Any) -> resources_pb2.NewTaskEvent:
    return resources_pb2.NewTaskEvent(sequence=sequence, kind=kind, text=text, **kw)


def record(api: Api, task_id: str, token: str, *messages: list[resources_pb2.NewTaskEvent]) -> Any:
    """One RecordTaskEvents call streaming `messages` (each a list of events) under `token`."""

    async def stream() -> AsyncIterator[daemon_pb2.RecordTaskEventsRequest]:
        for events in messages:
            yield daemon_pb2.RecordTaskEventsRequest(task_id=task_id, lease_token=token, events=events)

    return api.daemon.RecordTaskEvents(stream(), metadata=api.md)


def append(api: Api, token: str, expected_next_index: int, *contents: str, **target: Any) -> Any:
    request = daemon_pb2.AppendMessagesRequest(
        lease_token=token,
        expected_next_index=expected_next_index,
        messages=[
            resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content=c) for c in contents
        ],
        **target,
    )
    return api.daemon.AppendMessages(request, metadata=api.md)


async def resume(api: Api, task_id: str) -> None:
    await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=task_id), metadata=api.md)


async def events_of(api: Api, task_id: str) -> list[tuple[int, str]]:
    listed = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task_id), metadata=api.md)
    return [(e.sequence, e.text) for e in listed.events]


async def state(server: App, api: Api, task_id: str) -> tuple[Any, ...]:
    """Everything a write could change: the task, its events, its conversation and the timeline."""
    conversation = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task_id), metadata=api.md
    )
    listed = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task_id), metadata=api.md)
    timeline = [(e.cursor, e.kind, e.data) for e in await timeline_of(server, api)]
    return await get_task(api, task_id), list(listed.events), list(conversation.messages), timeline


@asynccontextmanager
async def own_server(database_url: str, workspace: Path, **settings: Any) -> AsyncIterator[tuple[App, Api]]:
    """A server of its own (for short leases), and an owner's stubs on it."""
    app = await start(Settings(listen="127.0.0.1:0", database_url=database_url, workspace_root=workspace, **settings))
    try:
        key = await create_api_key(app.runtime, owner_id=uuid.uuid4())
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, Api(channel=channel, owner_id=key.owner_id, key=key.secret)
    finally:
        await app.stop(1)


@pytest.fixture
async def fast_leases(empty_database_url: str, tmp_path: Path) -> AsyncIterator[tuple[App, Api]]:
    """Leases of one second, swept every 0.2 s."""
    async with own_server(empty_database_url, tmp_path, lease_seconds=1, sweep_seconds=0.2) as served:
        yield served


@asynccontextmanager
async def beating(api: Api, daemon_id: str, task_id: str) -> AsyncIterator[None]:
    """Keep a daemon's lease on a task alive meanwhile."""

    async def beat() -> None:
        while True:
            await heartbeat(api, daemon_id, task_id)
            await asyncio.sleep(0.2)

    running = asyncio.create_task(beat())
    try:
        yield
    finally:
        running.cancel()


async def test_a_daemon_that_went_silent_cannot_write_over_the_one_that_took_over(
    fast_leases: tuple[App, Api],
) -> None:
    """The issue's reproduction: D0 records 1-2 and goes silent, the task is interrupted and resumed, D1
    claims it; D0's sequence 3 is refused and D1's sequence 3 is stored, not taken for a duplicate."""
    _, api = fast_leases
    task = await create_task(api, "job")
    d0, d1 = (await register(api, "d0")).daemon.id, (await register(api, "d1")).daemon.id
    c0 = (await claim(api, d0)).claimed
    first = await record(api, task.id, c0.lease_token, [event(1, "d0 1"), event(2, "d0 2")])
    assert (first.stored_count, first.last_sequence) == (2, 2)

    await wait_for_status(api, task.id, INTERRUPTED)  # D0 sent no heartbeat
    await resume(api, task.id)
    c1 = (await claim(api, d1, wait=5)).claimed
    async with beating(api, d1, task.id):
        late = await fails(record(api, task.id, c0.lease_token, [event(3, "d0 3")]), LOST, reason="LEASE_LOST")
        mine = await record(api, task.id, c1.lease_token, [event(3, "d1 3")])
        await fails(append(api, c0.lease_token, 0, "d0 says", task_id=task.id), LOST, reason="LEASE_LOST")
        await fails(report(api, d0, task.id, COMPLETED, lease_token=c0.lease_token), LOST, reason="LEASE_LOST")
        held = await get_task(api, task.id)

    assert (c1.task.id, c1.last_event_sequence) == (task.id, 2)
    assert c1.lease_token != c0.lease_token
    assert late.metadata == {"task": task.id, "status": "running"}
    assert "claimed again" in late.message
    assert (mine.stored_count, mine.duplicate_count, mine.last_sequence) == (1, 0, 3)
    assert await events_of(api, task.id) == [(1, "d0 1"), (2, "d0 2"), (3, "d1 3")]
    assert (held.status, held.daemon_id, held.message_count) == (RUNNING, d1, 0)


async def test_writes_under_a_lost_lease_change_nothing(api: Api, server: App) -> None:
    """Each of the three writes, under a token whose lease ended (task interrupted, pending again, or
    claimed by another daemon), fails LEASE_LOST and leaves events, conversation, task and timeline as
    they were; a refused write stores no idempotency record either."""
    task = await create_task(api, "job")
    d0, d1 = (await register(api, "d0")).daemon.id, (await register(api, "d1")).daemon.id
    stale = (await claim(api, d0)).claimed.lease_token
    await record(api, task.id, stale, [event(1, "d0 1")])
    await append(api, stale, 0, "d0 0", task_id=task.id)
    await report(api, d0, task.id, INTERRUPTED, lease_token=stale)
    request_id = str(uuid.uuid4())

    async def refused(why: str) -> None:
        before = await state(server, api, task.id)
        writes = [
            record(api, task.id, stale, [event(2, "d0 2")]),
            append(api, stale, 1, "d0 1", task_id=task.id, request_id=request_id),
            report(api, d0, task.id, COMPLETED, lease_token=stale, request_id=request_id),
        ]
        for write in writes:
            assert why in (await fails(write, LOST, reason="LEASE_LOST")).message
        assert await state(server, api, task.id) == before

    await refused("the task is interrupted")
    await resume(api, task.id)
    await refused("the task is pending")
    fresh = (await claim(api, d1)).claimed.lease_token
    await refused("the task was claimed again")

    appended = await append(api, fresh, 1, "d1 1", task_id=task.id, request_id=request_id)
    done = await report(api, d1, task.id, COMPLETED, lease_token=fresh, request_id=str(uuid.uuid4()))
    assert appended.next_index == 2  # the request_id was not spent by the refused appends
    assert (done.task.status, done.task.daemon_id) == (COMPLETED, d1)
    assert await events_of(api, task.id) == [(1, "d0 1")]


async def test_a_lease_that_ran_out_is_lost_before_the_sweeper_sees_it(empty_database_url: str, tmp_path: Path) -> None:
    """Between the end of a lease and the sweep the task is still RUNNING, yet the lease is lost: the
    holder's writes are refused, and a tool may write since no daemon holds the task."""
    async with own_server(empty_database_url, tmp_path, lease_seconds=0.5, sweep_seconds=3600) as (app, api):
        task = await create_task(api, "job")
        daemon = (await register(api)).daemon.id
        token = (await claim(api, daemon)).claimed.lease_token
        await asyncio.sleep(0.7)

        before = await state(app, api, task.id)
        ran_out = await fails(record(api, task.id, token, [event(1, "late")]), LOST, reason="LEASE_LOST")
        await fails(append(api, token, 0, "late", task_id=task.id), LOST, reason="LEASE_LOST")
        await fails(report(api, daemon, task.id, COMPLETED, lease_token=token), LOST, reason="LEASE_LOST")
        assert await state(app, api, task.id) == before
        by_tool = await record(api, task.id, "", [event(1, "from a tool")])

    assert "the lease ran out" in ran_out.message
    assert before[0].status == RUNNING
    assert by_tool.stored_count == 1


async def test_a_tool_without_a_token_never_writes_to_a_running_task(api: Api, server: App) -> None:
    contract = await create_contract(api, "c")
    supervisor = (
        await api.supervisor.StartSupervisor(
            supervisor_pb2.StartSupervisorRequest(contract_id=contract.id), metadata=api.md
        )
    ).supervisor_task
    worker = await create_task(api, "worker")
    await record(api, worker.id, "", [event(1, "before the claim")])
    daemon = (await register(api)).daemon.id
    tokens = {}
    for _ in range(2):
        claimed = (await claim(api, daemon)).claimed
        tokens[claimed.task.id] = claimed.lease_token

    before = await state(server, api, worker.id)
    failures = [
        await fails(record(api, worker.id, "", [event(2, "tool")]), LOST, reason="LEASE_REQUIRED"),
        await fails(append(api, "", 0, "tool", task_id=worker.id), LOST, reason="LEASE_REQUIRED"),
    ]
    await fails(append(api, "", 0, "tool", contract_id=contract.id), LOST, reason="LEASE_REQUIRED")
    assert await state(server, api, worker.id) == before
    assert [f.metadata for f in failures] == [{"task": worker.id, "daemon": daemon}] * 2

    # The supervisor's daemon appends through the contract with the supervisor task's token.
    by_daemon = await append(api, tokens[supervisor.id], 0, "plan", contract_id=contract.id)
    assert (by_daemon.task_id, by_daemon.next_index) == (supervisor.id, 1)

    # Once no daemon runs the task, a tool writes again.
    await report(api, daemon, worker.id, COMPLETED, lease_token=tokens[worker.id])
    assert (await record(api, worker.id, "", [event(2, "tool")])).stored_count == 1
    assert (await append(api, "", 0, "tool", task_id=worker.id)).next_index == 1


async def test_tokens_must_be_well_formed_and_of_the_task(api: Api) -> None:
    a, b = await create_task(api, "a"), await create_task(api, "b")
    daemon = (await register(api)).daemon.id
    tokens = {}
    for _ in range(2):
        claimed = (await claim(api, daemon)).claimed
        tokens[claimed.task.id] = claimed.lease_token

    for bad in ("nope", f"{a.id}.0", f"{a.id}.-1", f"{a.id}. 1", f"{a.id.upper()}.1", "x" * 300):
        for write in (record(api, a.id, bad, [event(1, "x")]), append(api, bad, 0, "x", task_id=a.id)):
            assert (await fails(write, grpc.StatusCode.INVALID_ARGUMENT)).fields == ["lease_token"]

    # A's token is no lease of B, although both are running under the same epoch.
    other = await fails(record(api, b.id, tokens[a.id], [event(1, "x")]), LOST, reason="LEASE_LOST")
    assert "another task" in other.message

    async def switching() -> AsyncIterator[daemon_pb2.RecordTaskEventsRequest]:
        for token, sequence in ((tokens[a.id], 1), ("", 2)):
            yield daemon_pb2.RecordTaskEventsRequest(task_id=a.id, lease_token=token, events=[event(sequence, "x")])

    switched = await fails(api.daemon.RecordTaskEvents(switching(), metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT)
    assert switched.fields == ["lease_token"]
    assert await events_of(api, a.id) == []  # a call is one transaction: its first message is not stored either
    assert await events_of(api, b.id) == []


async def test_a_resend_with_other_content_is_an_event_conflict(api: Api, server: App) -> None:
    task = await create_task(api)
    data = struct_pb2.Struct()
    data.update({"command": "ls", "args": [1, 2]})
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    one = event(1, "one", TOOL_CALL, data=data)
    one.event_time.FromDatetime(when)
    two = event(2, "two")  # no event_time: the service stamps it
    await record(api, task.id, "", [one, two])

    resent = await record(api, task.id, "", [one, two])
    assert (resent.stored_count, resent.duplicate_count) == (0, 2)
    before = await state(server, api, task.id)

    other_data = struct_pb2.Struct()
    other_data.update({"command": "ls", "args": [1, 3]})
    variants = {
        "kind": event(1, "one", OUTPUT, data=data, event_time=one.event_time),
        "text": event(1, "One", TOOL_CALL, data=data, event_time=one.event_time),
        "data": event(1, "one", TOOL_CALL, data=other_data, event_time=one.event_time),
        "event_time": event(1, "one", TOOL_CALL, data=data),
    }
    variants["event_time"].event_time.FromDatetime(when.replace(microsecond=678902))
    for field, variant in variants.items():
        # A new event before the conflicting resend: it is not stored either.
        conflict = await fails(
            record(api, task.id, "", [event(3, "three"), variant]), grpc.StatusCode.ABORTED, reason="EVENT_CONFLICT"
        )
        assert conflict.metadata == {"task": task.id, "sequence": "1", "fields": field}
    no_data = await fails(
        record(api, task.id, "", [event(1, "one", TOOL_CALL, event_time=one.event_time)]),
        grpc.StatusCode.ABORTED,
        reason="EVENT_CONFLICT",
    )
    in_batch = await fails(
        record(api, task.id, "", [event(3, "three"), event(3, "tree")]),
        grpc.StatusCode.ABORTED,
        reason="EVENT_CONFLICT",
    )
    assert no_data.metadata["fields"] == "data"
    assert (in_batch.metadata["sequence"], in_batch.metadata["fields"]) == ("3", "text")
    assert await state(server, api, task.id) == before

    # A call is one transaction: the message before a conflicting one is not stored either.
    await fails(record(api, task.id, "", [event(3, "three")], [event(2, "2")]), grpc.StatusCode.ABORTED)
    assert await events_of(api, task.id) == [(1, "one"), (2, "two")]


async def test_no_write_under_a_lease_lands_after_it_ended(fast_leases: tuple[App, Api]) -> None:
    """D0 writes as fast as it can without heartbeats while its lease runs out, the sweeper interrupts
    the task, and D1 takes it over: every event D0 got stored precedes the interruption on the
    timeline, and D0 learns of the loss with LEASE_LOST."""
    app, api = fast_leases
    task = await create_task(api, "race")
    d0, d1 = (await register(api, "d0")).daemon.id, (await register(api, "d1")).daemon.id
    c0 = (await claim(api, d0)).claimed

    async def silent_writer() -> int:
        sequence = 0
        while True:
            sequence += 1
            try:
                await record(api, task.id, c0.lease_token, [event(sequence, "d0")])
            except aio.AioRpcError as err:
                assert err.code() == LOST
                return sequence

    async def taker() -> tuple[daemon_pb2.ClaimedTask, daemon_pb2.RecordTaskEventsResponse]:
        await wait_for_status(api, task.id, INTERRUPTED)
        await resume(api, task.id)
        c1 = (await claim(api, d1, wait=5)).claimed
        async with beating(api, d1, task.id):
            return c1, await record(api, task.id, c1.lease_token, [event(c1.last_event_sequence + 1, "d1")])

    async with asyncio.timeout(30):
        refused_at, (c1, by_d1) = await asyncio.gather(silent_writer(), taker())

    timeline = await timeline_of(app, api)
    interrupted = next(e.cursor for e in timeline if e.data and e.data.get("to") == "interrupted")
    recorded = [e for e in timeline if e.kind == "task_events_recorded"]
    by_d0 = [e for e in recorded if e.data["last_sequence"] < refused_at]
    assert by_d0 and all(e.cursor < interrupted for e in by_d0)
    assert c1.last_event_sequence == refused_at - 1  # D0's refused write left nothing behind
    assert (by_d1.stored_count, by_d1.last_sequence, list(by_d1.gaps)) == (1, refused_at, [])
