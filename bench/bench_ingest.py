"""Ingest on PostgreSQL: RecordTaskEvents and AppendMessages vs asyncpg `executemany` of the same rows.

The baseline inserts the same rows straight into the same tables, 100 rows per transaction, from one
connection. Ours, through gRPC to a `makima-server serve` process:
- RecordTaskEvents, one call per 100 events (a daemon flushing its output), and one stream of many
  messages of 100 events (stored in one transaction when the stream ends);
- AppendMessages, one call per 100 messages, each with a request_id.
Each prints rows/s and the ratio ours/baseline (higher is better), medians of 3 rounds, and the
server's CPU seconds per call.

Run: .venv/bin/python bench/bench_ingest.py [--postgres-url ...] [--rows 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
from _common import dsn, served
from bench_unary import cpu_seconds, ready

from makima.v1 import daemon_pb2, daemon_pb2_grpc, resources_pb2, task_fork_pb2, task_fork_pb2_grpc

ROUNDS = 3
BATCH = 100
OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT
ASSISTANT = resources_pb2.MESSAGE_ROLE_ASSISTANT


def events(first: int, count: int) -> list[resources_pb2.NewTaskEvent]:
    return [resources_pb2.NewTaskEvent(sequence=s, kind=OUTPUT, text=f"line {s}") for s in range(first, first + count)]


async def timed(work: Callable[[], Awaitable[int]], pid: int) -> tuple[float, float]:
    """Rows/s of `work` (which returns how many calls it made) and the server's CPU ms per call."""
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    calls = await work()
    elapsed = time.perf_counter() - started
    return elapsed, (cpu_seconds(pid) - cpu) / calls * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MAKIMA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--rows", type=int, default=5000, help="rows per round of each measurement")
    args = parser.parse_args()
    rows = args.rows - args.rows % BATCH
    name = f"makima_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn(args.postgres_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.postgres_url.rsplit("/", 1)[0] + "/" + name
    proc, address, secret = await served(url)
    try:
        channel = await ready(address)
        md = (("authorization", f"Bearer {secret}"),)
        tasks = task_fork_pb2_grpc.TaskForkServiceStub(channel)
        daemon = daemon_pb2_grpc.DaemonServiceStub(channel)

        async def new_task(label: str) -> str:
            return (await tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name=label), metadata=md)).task.id

        conn = await asyncpg.connect(dsn(url))
        owner = await conn.fetchval("SELECT id FROM owners")
        figures: dict[str, list[tuple[float, float]]] = {}

        def keep(label: str, elapsed: float, cpu_ms: float) -> None:
            figures.setdefault(label, []).append((rows / elapsed, cpu_ms))

        for _ in range(ROUNDS):
            per_call, streamed, messages = await new_task("calls"), await new_task("stream"), await new_task("msgs")
            raw_events, raw_messages = uuid.UUID(await new_task("raw")), await new_task("raw msgs")

            async def record_calls(task_id: str = per_call) -> int:
                for first in range(1, rows + 1, BATCH):
                    request = daemon_pb2.RecordTaskEventsRequest(task_id=task_id, events=events(first, BATCH))
                    response = await daemon.RecordTaskEvents(iter([request]), metadata=md)
                    assert response.stored_count == BATCH
                return rows // BATCH

            async def record_stream(task_id: str = streamed) -> int:
                async def requests() -> AsyncIterator[daemon_pb2.RecordTaskEventsRequest]:
                    for first in range(1, rows + 1, BATCH):
                        yield daemon_pb2.RecordTaskEventsRequest(task_id=task_id, events=events(first, BATCH))

                response = await daemon.RecordTaskEvents(requests(), metadata=md)
                assert response.stored_count == rows
                return 1

            async def append_calls(task_id: str = messages) -> int:
                for first in range(0, rows, BATCH):
                    request = daemon_pb2.AppendMessagesRequest(
                        request_id=str(uuid.uuid4()),
                        task_id=task_id,
                        expected_next_index=first,
                        messages=[
                            resources_pb2.NewConversationMessage(role=ASSISTANT, content=f"message {i}")
                            for i in range(first, first + BATCH)
                        ],
                    )
                    await daemon.AppendMessages(request, metadata=md)
                return rows // BATCH

            async def raw_events_insert(task_id: uuid.UUID = raw_events) -> int:
                now = datetime.now(UTC)
                for first in range(1, rows + 1, BATCH):
                    async with conn.transaction():
                        await conn.executemany(
                            "INSERT INTO task_events (owner_id, task_id, sequence, kind, text, event_time, record_time)"
                            " VALUES ($1, $2, $3, 'output', $4, $5, $5) ON CONFLICT DO NOTHING",
                            [(owner, task_id, s, f"line {s}", now) for s in range(first, first + BATCH)],
                        )
                return 1

            async def raw_messages_insert(task_id: str = raw_messages) -> int:
                version = await conn.fetchval("SELECT conversation_id FROM tasks WHERE id = $1", uuid.UUID(task_id))
                now = datetime.now(UTC)
                for first in range(0, rows, BATCH):
                    async with conn.transaction():
                        await conn.executemany(
                            "INSERT INTO conversation_messages (owner_id, conversation_id, position, role, content,"
                            " create_time) VALUES ($1, $2, $3, 'assistant', $4, $5)",
                            [(owner, version, p, f"message {p}", now) for p in range(first, first + BATCH)],
                        )
                return 1

            for label, work in (
                ("events raw", raw_events_insert),
                ("events calls", record_calls),
                ("events stream", record_stream),
                ("messages raw", raw_messages_insert),
                ("messages calls", append_calls),
            ):
                keep(label, *await timed(work, proc.pid))
        await conn.close()
        await channel.close()

        def rate(label: str) -> float:
            return statistics.median(r for r, _ in figures[label])

        def cpu(label: str) -> float:
            return statistics.median(c for _, c in figures[label])

        for label, base, what in (
            ("events calls", "events raw", f"RecordTaskEvents, one call per {BATCH} events"),
            ("events stream", "events raw", f"RecordTaskEvents, one stream of {rows // BATCH} messages of {BATCH}"),
            ("messages calls", "messages raw", f"AppendMessages, {BATCH} per call"),
        ):
            print(
                f"ingest   {what}: {rate(label):,.0f} rows/s vs asyncpg executemany {rate(base):,.0f} rows/s "
                f"| ratio ours/raw {rate(label) / rate(base):.2f} (target >= 1.0) | server CPU {cpu(label):.2f} ms/call"
            )
    finally:
        proc.terminate()
        await proc.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
