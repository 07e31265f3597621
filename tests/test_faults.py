"""Faults with real processes: the database refusing connections, and a server killed with SIGKILL.

Each test runs `makima-server serve` as a child process on a database of its own and talks to it
only through gRPC, as production clients do.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2
from grpc import aio

from makima.client import AsyncClient, RetryPolicy
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.conftest import postgres_base_url
from tests.helpers import Api, free_port

SERVER_BIN = str(Path(sys.executable).parent / "makima-server")
CONTRACT_CREATED = resources_pb2.TIMELINE_EVENT_KIND_CONTRACT_CREATED
OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT
ASSISTANT = resources_pb2.MESSAGE_ROLE_ASSISTANT
# Seeds of the point where the server is killed: fixed, so a failure replays.
KILL_SEEDS = (7, 1234)


@dataclass
class Served:
    """A `makima-server serve` child process and a key of one owner on it."""

    database_url: str
    workspace: Path
    log: Path
    key: str = ""
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return os.environ | {
            "MAKIMA_DATABASE_URL": self.database_url,
            "MAKIMA_WORKSPACE_ROOT": str(self.workspace),
            "MAKIMA_LISTEN": self.address,
            "MAKIMA_TIMELINE_RECHECK_SECONDS": "0.5",
            "MAKIMA_KEEP_ALIVE_SECONDS": "1",
            "MAKIMA_SHUTDOWN_GRACE": "1",
        }

    async def create_key(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            SERVER_BIN,
            "create-api-key",
            "--owner",
            str(uuid.uuid4()),
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        self.key = out.decode().strip()

    async def start(self) -> None:
        """Start serving on a fresh port and wait until it answers."""
        self.port = free_port()
        self.starts += 1
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(SERVER_BIN, "serve", env=self.env(), stderr=log)
        async with aio.insecure_channel(self.address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 30)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log_errors(self, limit: int = 10) -> str:
        """The distinct warnings and errors the server logged (message and exception line), for failure messages."""
        seen: dict[str, None] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") in ("warning", "error"):
                lines = [x for x in str(record.get("exc", "")).splitlines() if x.strip() and not x.startswith("(")]
                seen[f"{record.get('logger')}: {record.get('msg')} | {(lines or [''])[-1][:300]}"] = None
        return "\n".join(list(seen)[:limit]) or "(no warning or error logged)"


@asynccontextmanager
async def served(database_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    server = Served(database_url=database_url, workspace=tmp_path / "workspace", log=tmp_path / "server.log")
    await server.create_key()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def api_of(server: Served) -> AsyncIterator[Api]:
    async with aio.insecure_channel(server.address) as channel:
        yield Api(channel=channel, owner_id=uuid.uuid4(), key=server.key)


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


# PostgreSQL refusing connections


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def refuse_connections(database: str) -> None:
    """Make `database` refuse new connections and end the open ones, from an admin connection to `test`."""
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_base_url()))
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        for _ in range(100):
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"connections to {database} did not end")
    finally:
        await admin.close()


async def allow_connections(database: str) -> None:
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_base_url()))
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


@dataclass
class Follower:
    """Follows the timeline from cursor 0 with the client's reconnecting follower, keeping every event."""

    client: AsyncClient
    events: list[resources_pb2.TimelineEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def run() -> None:
            retry = RetryPolicy(max_attempts=None, initial_backoff=0.1, max_backoff=0.5)
            async for event in self.client.follow_timeline(after_cursor=0, retry=retry):
                self.events.append(event)

        self.task = asyncio.create_task(run())

    async def until(self, done: Callable[[], bool], seconds: float) -> None:
        """Wait until `done()`; fails early if the follower itself failed."""
        assert self.task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not done():
            if self.task.done():
                self.task.result()  # raises what ended the follower
                raise AssertionError("the follower ended")
            assert loop.time() < deadline, f"follower has {len(self.events)} events after {seconds} s"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Cancel the follower; what ended it early was already reported by `until`."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def outage_calls(api: Api, contract_id: str, task_id: str, daemon_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each kind (read, write, client stream, long-poll) that needs the database."""
    md, t = api.md, 5.0

    async def record() -> Any:
        request = daemon_pb2.RecordTaskEventsRequest(
            task_id=task_id, events=[resources_pb2.NewTaskEvent(sequence=1_000, kind=OUTPUT, text="x")]
        )
        return await api.daemon.RecordTaskEvents(iter([request]), metadata=md, timeout=t)

    return {
        "CreateContract": lambda: api.supervisor.CreateContract(
            supervisor_pb2.CreateContractRequest(name="during outage", request_id=str(uuid.uuid4())),
            metadata=md,
            timeout=t,
        ),
        "GetContract": lambda: api.supervisor.GetContract(
            supervisor_pb2.GetContractRequest(contract_id=contract_id), metadata=md, timeout=t
        ),
        "ListTimeline": lambda: api.history.ListTimeline(history_pb2.ListTimelineRequest(), metadata=md, timeout=t),
        "GetTask": lambda: api.tasks.GetTask(task_fork_pb2.GetTaskRequest(task_id=task_id), metadata=md, timeout=t),
        "RecordTaskEvents": record,
        "AppendMessages": lambda: api.daemon.AppendMessages(
            daemon_pb2.AppendMessagesRequest(
                task_id=task_id,
                expected_next_index=0,
                messages=[resources_pb2.NewConversationMessage(role=ASSISTANT, content="x")],
            ),
            metadata=md,
            timeout=t,
        ),
        "ClaimTask": lambda: api.daemon.ClaimTask(
            daemon_pb2.ClaimTaskRequest(daemon_id=daemon_id, wait=duration_pb2.Duration()), metadata=md, timeout=t
        ),
        "Heartbeat": lambda: api.daemon.Heartbeat(
            daemon_pb2.HeartbeatRequest(daemon_id=daemon_id), metadata=md, timeout=t
        ),
    }


async def create_contracts(api: Api, names: list[str]) -> list[str]:
    """Create one contract per name; returns the ids acknowledged."""
    created = []
    for name in names:
        response = await api.supervisor.CreateContract(
            supervisor_pb2.CreateContractRequest(name=name, request_id=str(uuid.uuid4())), metadata=api.md, timeout=10
        )
        created.append(response.contract.id)
    return created


async def until_recovered(api: Api, seconds: float) -> str:
    """Retry one logical write (one request_id) until the server accepts it; returns the contract id."""
    request = supervisor_pb2.CreateContractRequest(name="first after outage", request_id=str(uuid.uuid4()))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            return (await api.supervisor.CreateContract(request, metadata=api.md, timeout=5)).contract.id
        except aio.AioRpcError:
            assert loop.time() < deadline, f"no recovery within {seconds} s"
            await asyncio.sleep(0.2)


@pytest.mark.postgresql_only
@pytest.mark.timeout(90)
async def test_postgresql_outage_answers_unavailable_then_recovers_with_nothing_lost(
    empty_database_url: str, tmp_path: Path
) -> None:
    """While the database refuses connections every call answers UNAVAILABLE; once it accepts them the
    same server process serves again, and the follower's stream holds every acknowledged write exactly
    once, in cursor order."""
    database = empty_database_url.rsplit("/", 1)[1]
    async with served(empty_database_url, tmp_path) as server, api_of(server) as api:
        client = AsyncClient(server.address, server.key, timeout=10)
        follower = Follower(client)
        follower.start()
        try:
            task = (
                await api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t"), metadata=api.md, timeout=10)
            ).task
            daemon = (
                await api.daemon.RegisterDaemon(daemon_pb2.RegisterDaemonRequest(name="d"), metadata=api.md, timeout=10)
            ).daemon
            acknowledged = await create_contracts(api, [f"before {i}" for i in range(10)])
            await follower.until(lambda: len(follower.events) >= 12, 20)

            await refuse_connections(database)
            try:
                answers: list[tuple[str, grpc.StatusCode]] = []
                calls = outage_calls(api, acknowledged[0], task.id, daemon.id)
                for _ in range(3):
                    for name, call in calls.items():
                        answers.append((name, await code_of(call())))
                    await asyncio.sleep(0.3)
            finally:
                await allow_connections(database)
            wrong = sorted({(name, code.name) for name, code in answers if code != grpc.StatusCode.UNAVAILABLE})
            assert not wrong, f"calls during the outage answered {wrong}\nserver log:\n{server.log_errors()}"

            acknowledged.append(await until_recovered(api, 30))
            acknowledged += await create_contracts(api, [f"after {i}" for i in range(10)])
            assert server.proc is not None and server.proc.returncode is None and server.starts == 1

            await follower.until(lambda: set(acknowledged) <= _created(follower.events), 30)
            cursors = [e.cursor for e in follower.events]
            assert cursors == sorted(set(cursors)), "the stream repeated or reordered events"
            contract_events = [e.contract_id for e in follower.events if e.kind == CONTRACT_CREATED]
            assert all(contract_events.count(c) == 1 for c in acknowledged)
            listed = await api.history.ListTimeline(
                history_pb2.ListTimelineRequest(page_size=1000), metadata=api.md, timeout=10
            )
            stored = [e.cursor for e in listed.events if e.cursor <= cursors[-1]]
            assert cursors == stored, "the stream skipped events the database holds"
        finally:
            await follower.stop()
            await client.close()


async def end_connections(database: str) -> None:
    """End every open connection to `database` (as a server restart does), leaving it open to new ones."""
    admin = await asyncpg.connect(_asyncpg_dsn(postgres_base_url()))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()


@pytest.mark.postgresql_only
@pytest.mark.timeout(60)
async def test_connections_ended_by_the_database_cost_at_most_one_failed_call(
    empty_database_url: str, tmp_path: Path
) -> None:
    """With the pool full of connections the database has ended, one call answers UNAVAILABLE at most:
    the pool replaces the rest on checkout, so the calls after it are served."""
    database = empty_database_url.rsplit("/", 1)[1]
    async with served(empty_database_url, tmp_path) as server, api_of(server) as api:
        contract_id = (await create_contracts(api, ["c"]))[0]
        request = supervisor_pb2.GetContractRequest(contract_id=contract_id)
        # Enough concurrent calls to open every pooled connection.
        await asyncio.gather(*(api.supervisor.GetContract(request, metadata=api.md, timeout=10) for _ in range(40)))

        await end_connections(database)
        codes = [await code_of(api.supervisor.GetContract(request, metadata=api.md, timeout=10)) for _ in range(30)]
    failed = [code for code in codes if code != grpc.StatusCode.OK]
    assert failed in ([], [grpc.StatusCode.UNAVAILABLE]), f"answers after the connections ended: {codes}"


def _created(events: list[resources_pb2.TimelineEvent]) -> set[str]:
    return {e.contract_id for e in events if e.kind == CONTRACT_CREATED}


# A server killed mid-ingest


@dataclass
class Ingest:
    """What a daemon sent and what the server acknowledged, for one task's events and another's messages."""

    events_task: str
    messages_task: str
    batches: int
    acked_batches: set[int] = field(default_factory=set)
    acked_appends: set[int] = field(default_factory=set)
    request_ids: list[str] = field(default_factory=list)

    @staticmethod
    def sequences(batch: int) -> range:
        return range(batch * 5 + 1, batch * 5 + 6)

    def record_request(self, batch: int) -> daemon_pb2.RecordTaskEventsRequest:
        return daemon_pb2.RecordTaskEventsRequest(
            task_id=self.events_task,
            events=[
                resources_pb2.NewTaskEvent(sequence=s, kind=OUTPUT, text=f"line {s}") for s in self.sequences(batch)
            ],
        )

    @staticmethod
    def contents(append: int) -> list[str]:
        return [f"message {append}.a", f"message {append}.b"]

    def append_request(self, append: int) -> daemon_pb2.AppendMessagesRequest:
        return daemon_pb2.AppendMessagesRequest(
            request_id=self.request_ids[append],
            task_id=self.messages_task,
            expected_next_index=2 * append,
            messages=[resources_pb2.NewConversationMessage(role=ASSISTANT, content=c) for c in self.contents(append)],
        )


async def send_events(api: Api, ingest: Ingest) -> None:
    for batch in range(ingest.batches):
        request = ingest.record_request(batch)
        await api.daemon.RecordTaskEvents(iter([request]), metadata=api.md, timeout=10)
        ingest.acked_batches.add(batch)


async def send_messages(api: Api, ingest: Ingest) -> None:
    for append in range(ingest.batches):
        await api.daemon.AppendMessages(ingest.append_request(append), metadata=api.md, timeout=10)
        ingest.acked_appends.add(append)


async def all_events(api: Api, task_id: str) -> list[resources_pb2.TaskEvent]:
    events: list[resources_pb2.TaskEvent] = []
    token = ""
    while True:
        page = await api.history.ListTaskEvents(
            history_pb2.ListTaskEventsRequest(task_id=task_id, page_size=1000, page_token=token), metadata=api.md
        )
        events += page.events
        token = page.next_page_token
        if not token:
            return events


async def conversation(api: Api, task_id: str) -> list[str]:
    messages: list[str] = []
    token = ""
    while True:
        page = await api.history.GetTaskConversation(
            history_pb2.GetTaskConversationRequest(task_id=task_id, page_size=1000, page_token=token), metadata=api.md
        )
        messages += [m.content for m in page.messages]
        token = page.next_page_token
        if not token:
            return messages


@pytest.mark.timeout(90)
@pytest.mark.parametrize("seed", KILL_SEEDS)
async def test_kill_9_mid_ingest_keeps_every_acknowledged_write_and_stores_resends_once(
    empty_database_url: str, tmp_path: Path, seed: int
) -> None:
    """SIGKILL while a daemon streams events and appends messages: after a restart on the same database
    every acknowledged write is there, and resending everything stores each event and message once."""
    rng = random.Random(seed)
    async with served(empty_database_url, tmp_path) as server:
        async with api_of(server) as api:
            events_task, messages_task = [
                (await api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name=n), metadata=api.md)).task.id
                for n in ("events", "messages")
            ]
            ingest = Ingest(events_task=events_task, messages_task=messages_task, batches=200)
            ingest.request_ids = [str(uuid.uuid4()) for _ in range(ingest.batches)]
            kill_after = rng.randint(10, 60)  # acknowledged writes, both kinds together
            writers = [asyncio.create_task(send_events(api, ingest)), asyncio.create_task(send_messages(api, ingest))]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while len(ingest.acked_batches) + len(ingest.acked_appends) < kill_after:
                for writer in writers:
                    if writer.done():
                        writer.result()  # a writer that failed before the kill fails the test
                assert loop.time() < deadline, "the writers made no progress"
                await asyncio.sleep(0.001)
            await server.kill()
            results = await asyncio.gather(*writers, return_exceptions=True)
            assert all(isinstance(r, aio.AioRpcError) for r in results), results
            acked_batches, acked_appends = set(ingest.acked_batches), set(ingest.acked_appends)

        await server.start()
        async with api_of(server) as api:
            stored = {e.sequence for e in await all_events(api, events_task)}
            missing = [s for b in sorted(acked_batches) for s in ingest.sequences(b) if s not in stored]
            assert not missing, f"acknowledged events lost: {missing[:10]}"
            messages = await conversation(api, messages_task)
            expected = [c for a in sorted(acked_appends) for c in ingest.contents(a)]
            assert messages[: len(expected)] == expected, "acknowledged messages lost or changed"

            for batch in range(ingest.batches):
                await api.daemon.RecordTaskEvents(iter([ingest.record_request(batch)]), metadata=api.md, timeout=10)
            for append in range(ingest.batches):
                await api.daemon.AppendMessages(ingest.append_request(append), metadata=api.md, timeout=10)

            sequences = [e.sequence for e in await all_events(api, events_task)]
            assert sorted(sequences) == list(range(1, 5 * ingest.batches + 1)), "an event is missing or stored twice"
            everything = [c for a in range(ingest.batches) for c in ingest.contents(a)]
            assert await conversation(api, messages_task) == everything, "a message is missing or stored twice"
