"""Conversation rewind and fork cost: 100 vs 10,000 messages, and vs the naive design.

The naive design (makima's original) keeps a conversation as one JSON array that a rewind reads,
truncates and writes back; it is measured on the same PostgreSQL server, in a table of its own.
Every figure is the median latency of one RPC (or one naive rewrite), printed with ratios.

Run: .venv/bin/python bench/bench_conversation.py [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from grpc import aio

from makima.server.app import start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from makima.v1 import (
    daemon_pb2,
    daemon_pb2_grpc,
    resources_pb2,
    supervisor_pb2,
    supervisor_pb2_grpc,
    task_fork_pb2,
    task_fork_pb2_grpc,
)

SIZES = (100, 10_000)
RUNS = 30
MESSAGE = "x" * 400  # a typical agent message is a few hundred bytes


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def timed(call) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    await call
    return (time.perf_counter() - started) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MAKIMA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    )
    base = parser.parse_args().postgres_url
    name = f"makima_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn(base))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    app = await start(Settings(listen="127.0.0.1:0", database_url=url, workspace_root=Path(tempfile.mkdtemp())))
    try:
        key = await create_api_key(app.runtime, owner_id=uuid.uuid4())
        md = (("authorization", f"Bearer {key.secret}"),)
        channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
        tasks = task_fork_pb2_grpc.TaskForkServiceStub(channel)
        daemon = daemon_pb2_grpc.DaemonServiceStub(channel)
        supervisor = supervisor_pb2_grpc.SupervisorServiceStub(channel)
        ours: dict[str, dict[int, float]] = {"rewind": {}, "fork": {}}
        for size in SIZES:
            task = (await tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name=f"n{size}"), metadata=md)).task
            for first in range(0, size, 1000):
                batch = [
                    resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content=MESSAGE)
                    for _ in range(min(1000, size - first))
                ]
                await daemon.AppendMessages(
                    daemon_pb2.AppendMessagesRequest(task_id=task.id, expected_next_index=first, messages=batch),
                    metadata=md,
                )
            rewinds = [
                await timed(
                    supervisor.RewindConversation(
                        supervisor_pb2.RewindConversationRequest(task_id=task.id, by_message_count=1), metadata=md
                    )
                )
                for _ in range(RUNS)
            ]
            forks = [
                await timed(
                    tasks.ForkTask(
                        task_fork_pb2.ForkTaskRequest(task_id=task.id, message_index=size - RUNS - 2), metadata=md
                    )
                )
                for _ in range(RUNS)
            ]
            ours["rewind"][size] = statistics.median(rewinds)
            ours["fork"][size] = statistics.median(forks)
        await channel.close()

        conn = await asyncpg.connect(dsn(url))
        await conn.execute("CREATE TABLE naive (id int PRIMARY KEY, conversation jsonb NOT NULL)")
        naive: dict[int, float] = {}
        for size in SIZES:
            messages = [{"role": "assistant", "content": MESSAGE} for _ in range(size)]
            await conn.execute("INSERT INTO naive VALUES ($1, $2)", size, json.dumps(messages))
            samples = []
            for _ in range(RUNS):
                started = time.perf_counter()
                async with conn.transaction():
                    raw = await conn.fetchval("SELECT conversation FROM naive WHERE id = $1 FOR UPDATE", size)
                    kept = json.loads(raw)[:-1]
                    await conn.execute("UPDATE naive SET conversation = $2 WHERE id = $1", size, json.dumps(kept))
                samples.append((time.perf_counter() - started) * 1000)
            naive[size] = statistics.median(samples)
        await conn.close()
    finally:
        await app.stop(1)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    small, big = SIZES
    for what in ("rewind", "fork"):
        print(
            f"{what:7} RPC p50 {ours[what][small]:.2f} ms @{small} | {ours[what][big]:.2f} ms @{big:,} "
            f"| ratio {big:,}/{small} {ours[what][big] / ours[what][small]:.2f}"
        )
    print(
        f"naive   JSON-array rewind p50 {naive[small]:.2f} ms @{small} | {naive[big]:.2f} ms @{big:,} "
        f"| ratio {big:,}/{small} {naive[big] / naive[small]:.2f} "
        f"| naive/ours @{big:,} {naive[big] / ours['rewind'][big]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
