"""The daemon work loop: RegisterDaemon, ClaimTask (long-poll), Heartbeat, ReportTaskStatus, lease expiry."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from makima.server.domain.runtime import Runtime
from makima.server.domain.sweeper import LeaseSweeper
from makima.server.store.engine import Database
from makima.v1 import daemon_pb2, resources_pb2, task_fork_pb2
from tests.helpers import Api, append_messages, create_contract, create_task, fails, record_events
from tests.test_contracts import timeline_of

RUNNING = resources_pb2.TASK_STATUS_RUNNING
COMPLETED = resources_pb2.TASK_STATUS_COMPLETED
FAILED = resources_pb2.TASK_STATUS_FAILED
INTERRUPTED = resources_pb2.TASK_STATUS_INTERRUPTED
OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT


def seconds(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


async def register(api: Api, name: str = "daemon", **kw: Any) -> daemon_pb2.RegisterDaemonResponse:
    return await api.daemon.RegisterDaemon(daemon_pb2.RegisterDaemonRequest(name=name, **kw), metadata=api.md)


async def claim(
    api: Api, daemon_id: str, wait: float = 0, deadline: float | None = None, **kw: Any
) -> daemon_pb2.ClaimTaskResponse:
    request = daemon_pb2.ClaimTaskRequest(daemon_id=daemon_id, wait=seconds(wait), **kw)
    return await api.daemon.ClaimTask(request, metadata=api.md, timeout=deadline)


async def heartbeat(api: Api, daemon_id: str, *task_ids: str) -> daemon_pb2.HeartbeatResponse:
    request = daemon_pb2.HeartbeatRequest(daemon_id=daemon_id, task_ids=task_ids)
    return await api.daemon.Heartbeat(request, metadata=api.md)


def report(api: Api, daemon_id: str, task_id: str, status: int, message: str = "", **kw: Any) -> Any:
    request = daemon_pb2.ReportTaskStatusRequest(
        daemon_id=daemon_id, task_id=task_id, status=status, message=message, **kw
    )
    return api.daemon.ReportTaskStatus(request, metadata=api.md)


async def get_task(api: Api, task_id: str) -> resources_pb2.Task:
    return (await api.tasks.GetTask(task_fork_pb2.GetTaskRequest(task_id=task_id), metadata=api.md)).task


def near(stamp: Any, expected: datetime, tolerance: float = 2.0) -> bool:
    return abs((stamp.ToDatetime(tzinfo=UTC) - expected).total_seconds()) < tolerance


async def test_register_daemon_is_recorded_and_gives_the_lease(api: Api, server: App) -> None:
    request_id = str(uuid.uuid4())
    registered = await register(api, "  builder  ", hostname="host-1", request_id=request_id)
    daemon = registered.daemon
    uuid.UUID(daemon.id)
    assert (daemon.name, daemon.hostname) == ("builder", "host-1")
    assert near(daemon.create_time, datetime.now(UTC)) and daemon.last_heartbeat_time == daemon.create_time
    assert registered.lease_duration.ToTimedelta() == timedelta(seconds=server.settings.lease_seconds)

    again = await register(api, "  builder  ", hostname="host-1", request_id=request_id)
    assert again == registered
    events = await timeline_of(server, api)
    assert [(e.kind, e.data) for e in events] == [
        ("daemon_registered", {"daemon_id": daemon.id, "name": "builder", "hostname": "host-1"})
    ]
    failure = await fails(register(api, "   "), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == ["name"]


async def test_claim_heartbeat_and_report(api: Api, server: App) -> None:
    contract = await create_contract(api, initial_phase="execute")
    task = await create_task(api, "work", contract_id=contract.id)
    await append_messages(api, task.id, 0, "first", "second")
    await record_events(api, task.id, [(1, OUTPUT), (2, OUTPUT)])
    daemon = (await register(api)).daemon

    claimed = await claim(api, daemon.id)
    got = claimed.claimed
    assert (got.task.id, got.task.status, got.task.daemon_id) == (task.id, RUNNING, daemon.id)
    assert got.task.version == task.version + 2  # one append, one claim
    assert got.phase == "execute"
    assert [(m.index, m.content) for m in got.conversation] == [(0, "first"), (1, "second")]
    assert got.last_event_sequence == 2
    assert got.lease_token
    assert claimed.lease_expire_time == got.task.lease_expire_time
    assert near(claimed.lease_expire_time, datetime.now(UTC) + timedelta(seconds=server.settings.lease_seconds))
    assert (await claim(api, daemon.id)).HasField("claimed") is False  # it was the only pending task

    renewed = await heartbeat(api, daemon.id, task.id)
    assert list(renewed.lost_task_ids) == []
    assert renewed.lease_expire_time.ToDatetime() >= claimed.lease_expire_time.ToDatetime()
    assert (await get_task(api, task.id)).lease_expire_time == renewed.lease_expire_time

    done = (await report(api, daemon.id, task.id, COMPLETED, "all tests pass", lease_token=got.lease_token)).task
    assert (done.status, done.status_message, done.daemon_id) == (COMPLETED, "all tests pass", daemon.id)
    assert not done.HasField("lease_expire_time")
    assert done.version == got.task.version + 1
    assert await get_task(api, task.id) == done

    assert list((await heartbeat(api, daemon.id, task.id)).lost_task_ids) == [task.id]
    await fails(report(api, daemon.id, task.id, FAILED), grpc.StatusCode.FAILED_PRECONDITION, reason="LEASE_NOT_HELD")
    changes = [e for e in await timeline_of(server, api) if e.kind == "task_status_changed"]
    assert [(str(e.task_id), e.phase, e.data) for e in changes] == [
        (task.id, "execute", {"from": "pending", "to": "running", "daemon_id": daemon.id}),
        (
            task.id,
            "execute",
            {"from": "running", "to": "completed", "daemon_id": daemon.id, "message": "all tests pass"},
        ),
    ]


async def test_a_claim_carries_the_conversation_up_to_3_mib(api: Api) -> None:
    """Past the bound the daemon sees message_count > len(conversation) and reads the rest through history."""
    task = await create_task(api)
    for i in range(4):
        await append_messages(api, task.id, i, str(i) * 1024 * 1024)
    daemon = (await register(api)).daemon
    got = (await claim(api, daemon.id)).claimed
    assert got.task.message_count == 4
    assert [m.index for m in got.conversation] == [0, 1, 2]


async def test_claims_oldest_first_and_filters_by_kind(api: Api, other_api: Api) -> None:
    await create_task(other_api, "someone else's")
    first, second = await create_task(api, "first"), await create_task(api, "second")
    daemon = (await register(api)).daemon
    supervisors = await claim(api, daemon.id, kinds=[resources_pb2.TASK_KIND_SUPERVISOR])
    assert not supervisors.HasField("claimed")
    workers = [resources_pb2.TASK_KIND_WORKER]
    assert (await claim(api, daemon.id, kinds=workers)).claimed.task.id == first.id
    assert (await claim(api, daemon.id)).claimed.task.id == second.id
    assert not (await claim(api, daemon.id)).HasField("claimed")


async def test_report_is_idempotent_with_request_id(api: Api, server: App) -> None:
    task = await create_task(api)
    daemon = (await register(api)).daemon
    token = (await claim(api, daemon.id)).claimed.lease_token
    request_id = str(uuid.uuid4())
    first = await report(api, daemon.id, task.id, FAILED, "boom", request_id=request_id, lease_token=token)
    again = await report(api, daemon.id, task.id, FAILED, "boom", request_id=request_id, lease_token=token)
    assert again == first
    assert first.task.status == FAILED
    changes = [e for e in await timeline_of(server, api) if e.kind == "task_status_changed"]
    assert len(changes) == 2  # claimed, then failed once


async def test_report_by_a_daemon_without_the_lease_fails(api: Api) -> None:
    holder, other = (await register(api, "holder")).daemon, (await register(api, "other")).daemon
    running = await create_task(api, "running")
    await claim(api, holder.id)
    pending = await create_task(api, "pending")
    for daemon_id, task_id in ((other.id, running.id), (holder.id, pending.id)):
        failure = await fails(
            report(api, daemon_id, task_id, COMPLETED), grpc.StatusCode.FAILED_PRECONDITION, reason="LEASE_NOT_HELD"
        )
        assert failure.metadata == {"task": task_id, "daemon": daemon_id}
    assert list((await heartbeat(api, other.id, running.id)).lost_task_ids) == [running.id]
    assert (await get_task(api, running.id)).status == RUNNING


async def test_unknown_and_other_owners_daemons_are_not_found(api: Api, other_api: Api) -> None:
    task = await create_task(api)
    theirs = (await register(other_api)).daemon.id
    for daemon_id in (str(uuid.uuid4()), theirs):
        await fails(heartbeat(api, daemon_id), grpc.StatusCode.NOT_FOUND)
        await fails(claim(api, daemon_id), grpc.StatusCode.NOT_FOUND)
        await fails(report(api, daemon_id, task.id, COMPLETED), grpc.StatusCode.NOT_FOUND)
    mine = (await register(api)).daemon.id
    await fails(report(api, mine, str(uuid.uuid4()), COMPLETED), grpc.StatusCode.NOT_FOUND)
    assert (await get_task(api, task.id)).status == resources_pb2.TASK_STATUS_PENDING


async def test_bad_requests_are_invalid_arguments(api: Api) -> None:
    daemon = (await register(api)).daemon.id
    task = (await create_task(api)).id
    negative = daemon_pb2.ClaimTaskRequest(daemon_id=daemon, wait=duration_pb2.Duration(seconds=-1))
    calls = [
        (api.daemon.ClaimTask(negative, metadata=api.md), "wait"),
        (claim(api, daemon, kinds=[0]), "kinds[0]"),
        (claim(api, "not-a-uuid"), "daemon_id"),
        (heartbeat(api, daemon, "nope"), "task_ids[0]"),
        (heartbeat(api, ""), "daemon_id"),
        (report(api, daemon, task, resources_pb2.TASK_STATUS_UNSPECIFIED), "status"),
        (report(api, daemon, task, RUNNING), "status"),
        (report(api, daemon, task, resources_pb2.TASK_STATUS_PENDING), "status"),
        (report(api, daemon, task, 42), "status"),
        (report(api, daemon, "", COMPLETED), "task_id"),
        (report(api, daemon, task, COMPLETED, lease_token="nope"), "lease_token"),
        (report(api, daemon, task, COMPLETED, lease_token=f"{task}.0"), "lease_token"),
        (report(api, daemon, task, COMPLETED, lease_token=f"{task}.01"), "lease_token"),
    ]
    for call, field in calls:
        assert (await fails(call, grpc.StatusCode.INVALID_ARGUMENT)).fields == [field]


async def test_a_waiting_claim_takes_a_task_created_meanwhile_at_once(api: Api) -> None:
    daemon = (await register(api)).daemon
    waiting = asyncio.create_task(claim(api, daemon.id, wait=20))
    await asyncio.sleep(0.3)  # the claim found nothing and waits
    assert not waiting.done()
    created_at = time.monotonic()
    task = await create_task(api, "late")
    got = await asyncio.wait_for(waiting, 10)
    # Well within the 1 s database re-check: the commit itself woke the claim.
    assert time.monotonic() - created_at < 0.5
    assert got.claimed.task.id == task.id


async def test_a_claim_with_nothing_to_do_ends_after_its_wait(api: Api) -> None:
    daemon = (await register(api)).daemon
    began = time.monotonic()
    assert not (await claim(api, daemon.id, wait=0.6)).HasField("claimed")
    assert 0.6 <= time.monotonic() - began < 3
    began = time.monotonic()
    bounded = await claim(api, daemon.id, wait=30, deadline=1.5)  # the deadline ends it, with an answer
    assert not bounded.HasField("claimed")
    assert time.monotonic() - began < 1.5


async def test_eight_daemons_claim_500_tasks_each_exactly_once(api: Api, server: App) -> None:
    gate = asyncio.Semaphore(16)

    async def limited(call: Any) -> Any:
        async with gate:
            return await call

    created = {t.id for t in await asyncio.gather(*(limited(create_task(api, f"t{i}")) for i in range(500)))}
    daemons = [(await register(api, f"d{i}")).daemon.id for i in range(8)]
    claims: list[tuple[str, str]] = []

    async def work(daemon_id: str) -> None:
        while True:
            got = await claim(api, daemon_id)
            if not got.HasField("claimed"):
                return
            assert got.claimed.task.daemon_id == daemon_id
            claims.append((got.claimed.task.id, daemon_id))

    await asyncio.gather(*(work(d) for d in daemons))

    claimed_ids = [task_id for task_id, _ in claims]
    assert len(claimed_ids) == len(set(claimed_ids)) == 500
    assert set(claimed_ids) == created
    tasks = await asyncio.gather(*(limited(get_task(api, task_id)) for task_id, _ in claims))
    assert [(t.id, t.status, t.daemon_id) for t in tasks] == [(task_id, RUNNING, d) for task_id, d in claims]
    changes = [e for e in await timeline_of(server, api) if e.kind == "task_status_changed"]
    assert sorted(str(e.task_id) for e in changes) == sorted(created)


@pytest.fixture
async def short_lease(empty_database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    """A server of its own whose leases last 1 s and are swept every 0.2 s."""
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=empty_database_url,
        workspace_root=tmp_path,
        lease_seconds=1,
        sweep_seconds=0.2,
    )
    app = await start(settings)
    yield app
    await app.stop(1)


async def owner_api(app: App, channel: aio.Channel) -> Api:
    key = await create_api_key(app.runtime, owner_id=uuid.uuid4())
    return Api(channel=channel, owner_id=key.owner_id, key=key.secret)


async def wait_for_status(api: Api, task_id: str, status: int) -> resources_pb2.Task:
    for _ in range(100):
        task = await get_task(api, task_id)
        if task.status == status:
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} never reached status {status}")


async def test_an_expired_lease_interrupts_the_task_and_a_heartbeat_keeps_it(short_lease: App) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{short_lease.port}") as channel:
        api, other = await owner_api(short_lease, channel), await owner_api(short_lease, channel)
        daemon, other_daemon = (await register(api)).daemon.id, (await register(other)).daemon.id
        kept, dropped = await create_task(api, "kept"), await create_task(api, "dropped")
        theirs = await create_task(other, "theirs")
        await claim(api, daemon)
        claimed = (await claim(api, daemon)).claimed.task
        await claim(other, other_daemon)

        async def keep_alive() -> None:
            while True:
                renewed = await heartbeat(api, daemon, kept.id)
                assert near(renewed.lease_expire_time, datetime.now(UTC) + timedelta(seconds=1))
                await asyncio.sleep(0.25)

        beating = asyncio.create_task(keep_alive())
        try:
            interrupted = await wait_for_status(api, dropped.id, INTERRUPTED)
            assert (await wait_for_status(other, theirs.id, INTERRUPTED)).status_message == "lease expired"
            assert (await get_task(api, kept.id)).status == RUNNING
            assert list((await heartbeat(api, daemon, kept.id, dropped.id)).lost_task_ids) == [dropped.id]
        finally:
            beating.cancel()

        assert (interrupted.status_message, interrupted.daemon_id) == ("lease expired", daemon)
        assert not interrupted.HasField("lease_expire_time")
        assert interrupted.version == claimed.version + 1
        await fails(report(api, daemon, dropped.id, COMPLETED), grpc.StatusCode.FAILED_PRECONDITION)
        for owner, task in ((api, dropped), (other, theirs)):
            last = (await timeline_of(short_lease, owner))[-1]
            assert (last.kind, str(last.task_id)) == ("task_status_changed", task.id)
            assert last.data["to"] == "interrupted" and last.data["message"] == "lease expired"


async def test_shutdown_ends_a_waiting_claim_with_no_task(empty_database_url: str, tmp_path: Path) -> None:
    app = await start(Settings(listen="127.0.0.1:0", database_url=empty_database_url, workspace_root=tmp_path))
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        api = await owner_api(app, channel)
        daemon = (await register(api)).daemon.id
        waiting = asyncio.create_task(claim(api, daemon, wait=30))
        await asyncio.sleep(0.3)
        began = time.monotonic()
        await app.stop(5)
        assert not (await asyncio.wait_for(waiting, 10)).HasField("claimed")
        assert time.monotonic() - began < 3


async def test_concurrent_sweepers_interrupt_each_task_once(empty_database_url: str, tmp_path: Path) -> None:
    """Two more sweepers, each with its own engine as another server process would have, race on 60 tasks."""
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=empty_database_url,
        workspace_root=tmp_path,
        lease_seconds=0.5,
        sweep_seconds=3600,  # the server's own sweeper ran once at start and now sleeps
    )
    app = await start(settings)
    sweepers = [LeaseSweeper(Runtime(Database(empty_database_url)), interval=3600) for _ in range(2)]
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            api = await owner_api(app, channel)
            daemon = (await register(api)).daemon.id
            tasks = [await create_task(api, f"t{i}") for i in range(60)]
            while (await claim(api, daemon)).HasField("claimed"):
                pass
            await asyncio.sleep(0.6)
            counts = await asyncio.gather(*(s.sweep() for s in sweepers))
            assert sum(counts) == 60
            assert {(await get_task(api, t.id)).status for t in tasks} == {INTERRUPTED}
            events = await timeline_of(app, api)
            interrupted = [str(e.task_id) for e in events if e.data and e.data.get("to") == "interrupted"]
            assert sorted(interrupted) == sorted(t.id for t in tasks)
    finally:
        for s in sweepers:
            await s.rt.db.dispose()
        await app.stop(1)
