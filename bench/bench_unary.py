"""Unary RPC rate: GetTask and GetContract (auth, one read transaction, conversion) vs an empty grpc.aio
handler that returns a response of the same size.

Every server runs in its own process. For each RPC: calls/s at 64 concurrent callers (ratio ours/empty,
higher is better) and the p50 latency at concurrency 1 (ratio ours/empty, lower is better), each the
median of 3 rounds; the server's CPU seconds per call; and the RSS of each idle server. On SQLite and
on PostgreSQL.

Run: .venv/bin/python bench/bench_unary.py [--postgres-url ...] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from _common import dsn, free_port, served
from grpc import aio

from makima.v1 import supervisor_pb2, supervisor_pb2_grpc, task_fork_pb2, task_fork_pb2_grpc

CONCURRENCY = 64
ROUNDS = 3
EMPTY_SERVER = """
import asyncio, sys, grpc
from grpc import aio

RESPONSE = bytes(int(sys.argv[2]))

async def empty(request, context):
    return RESPONSE

async def main():
    server = aio.server()
    handler = grpc.unary_unary_rpc_method_handler(empty)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Empty", {"Call": handler})])
    server.add_insecure_port(sys.argv[1])
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""
Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Figures:
    """Medians of ROUNDS rounds of one RPC against one server process."""

    rate: float  # calls/s at CONCURRENCY
    p50_ms: float  # latency at concurrency 1
    cpu_ms_per_call: float  # server CPU per call at CONCURRENCY


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def rate(call: Call, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    """Calls/s of `concurrency` callers for `seconds`, and every call's latency."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while (start := time.perf_counter()) < stop:
            await call()
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def measure(call: Call, pid: int, seconds: float) -> Figures:
    rates, p50s, cpus = [], [], []
    await rate(call, 0.5, CONCURRENCY)  # warm-up: connections, caches
    for _ in range(ROUNDS):
        cpu = cpu_seconds(pid)
        r, latencies = await rate(call, seconds, CONCURRENCY)
        cpus.append((cpu_seconds(pid) - cpu) / len(latencies) * 1000)
        rates.append(r)
        _, single = await rate(call, seconds / 2, 1)
        p50s.append(statistics.median(single) * 1000)
    return Figures(statistics.median(rates), statistics.median(p50s), statistics.median(cpus))


async def ready(address: str) -> aio.Channel:
    channel = aio.insecure_channel(address)
    await asyncio.wait_for(channel.channel_ready(), 30)
    return channel


async def ours(database_url: str, seconds: float) -> tuple[dict[str, Figures], dict[str, int], float]:
    """GetTask and GetContract figures, their response sizes, and the idle server's RSS in MB."""
    server, address, key = await served(database_url)
    try:
        channel = await ready(address)
        supervisor = supervisor_pb2_grpc.SupervisorServiceStub(channel)
        tasks = task_fork_pb2_grpc.TaskForkServiceStub(channel)
        md = (("authorization", f"Bearer {key}"),)
        contract = (
            await supervisor.CreateContract(supervisor_pb2.CreateContractRequest(name="bench"), metadata=md)
        ).contract
        task = (
            await tasks.CreateTask(
                task_fork_pb2.CreateTaskRequest(name="bench", contract_id=contract.id, instructions="x" * 40),
                metadata=md,
            )
        ).task
        await asyncio.sleep(1)
        idle = rss_mb(server.pid)
        get_task = task_fork_pb2.GetTaskRequest(task_id=task.id)
        get_contract = supervisor_pb2.GetContractRequest(contract_id=contract.id)
        sizes = {
            "GetTask": (await tasks.GetTask(get_task, metadata=md)).ByteSize(),
            "GetContract": (await supervisor.GetContract(get_contract, metadata=md)).ByteSize(),
        }
        figures = {
            "GetTask": await measure(lambda: tasks.GetTask(get_task, metadata=md), server.pid, seconds),
            "GetContract": await measure(
                lambda: supervisor.GetContract(get_contract, metadata=md), server.pid, seconds
            ),
        }
        await channel.close()
        return figures, sizes, idle
    finally:
        server.terminate()
        await server.wait()


async def empty(seconds: float, size: int) -> tuple[Figures, float]:
    address = f"127.0.0.1:{free_port()}"
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", EMPTY_SERVER, address, str(size))
    try:
        channel = await ready(address)
        await asyncio.sleep(1)
        idle = rss_mb(server.pid)
        call = channel.unary_unary("/bench.Empty/Call", request_serializer=None, response_deserializer=None)
        figures = await measure(lambda: call(b""), server.pid, seconds)
        await channel.close()
        return figures, idle
    finally:
        server.terminate()
        await server.wait()


async def report(backend: str, database_url: str, seconds: float) -> None:
    figures, sizes, idle = await ours(database_url, seconds)
    print(f"unary    {backend}: idle server RSS {idle:.0f} MB")
    for rpc, f in figures.items():
        base, base_idle = await empty(seconds, sizes[rpc])
        print(
            f"unary    {backend} {rpc} ({sizes[rpc]} B): {f.rate:,.0f} calls/s vs empty {base.rate:,.0f} "
            f"| ratio ours/empty {f.rate / base.rate:.2f} (target >= 0.5)"
        )
        print(
            f"unary    {backend} {rpc} concurrency 1: p50 {f.p50_ms:.2f} ms vs empty {base.p50_ms:.2f} ms "
            f"| ratio ours/empty {f.p50_ms / base.p50_ms:.2f} (target <= 2)"
        )
        print(
            f"unary    {backend} {rpc} server CPU {f.cpu_ms_per_call:.3f} ms/call vs empty "
            f"{base.cpu_ms_per_call:.3f} ms/call (empty server idle RSS {base_idle:.0f} MB)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MAKIMA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--backend", choices=("both", "sqlite", "postgresql"), default="both")
    args = parser.parse_args()
    if args.backend in ("both", "sqlite"):
        await report("SQLite", f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db", args.seconds)
    if args.backend == "sqlite":
        return
    name = f"makima_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn(args.postgres_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await report("PostgreSQL", args.postgres_url.rsplit("/", 1)[0] + "/" + name, args.seconds)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
