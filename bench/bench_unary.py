"""Unary RPC rate: GetContract (auth, one read transaction, conversion) vs an empty grpc.aio handler.

Both servers run in their own process; 64 concurrent callers for a few seconds each. Prints calls/s
and the ratio ours/empty, on SQLite and on PostgreSQL.

Run: .venv/bin/python bench/bench_unary.py [--postgres-url ...] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from grpc import aio

from makima.v1 import supervisor_pb2, supervisor_pb2_grpc

CONCURRENCY = 64
EMPTY_SERVER = """
import asyncio, sys, grpc
from grpc import aio

async def empty(request, context):
    return b""

async def main():
    server = aio.server()
    handler = grpc.unary_unary_rpc_method_handler(empty)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Empty", {"Call": handler})])
    server.add_insecure_port(sys.argv[1])
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def rate(call, seconds: float) -> float:  # type: ignore[no-untyped-def]
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - started)


async def ready(address: str) -> aio.Channel:
    channel = aio.insecure_channel(address)
    await asyncio.wait_for(channel.channel_ready(), 30)
    return channel


async def ours(database_url: str, seconds: float) -> float:
    bin_dir = Path(sys.executable).parent
    address = f"127.0.0.1:{free_port()}"
    env = os.environ | {"MAKIMA_DATABASE_URL": database_url, "MAKIMA_LISTEN": address, "MAKIMA_LOG_LEVEL": "WARNING"}
    key_proc = await asyncio.create_subprocess_exec(
        str(bin_dir / "makima-server"),
        "create-api-key",
        "--owner",
        str(uuid.uuid4()),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    key = (await key_proc.communicate())[0].decode().strip()
    server = await asyncio.create_subprocess_exec(str(bin_dir / "makima-server"), "serve", env=env)
    try:
        channel = await ready(address)
        stub = supervisor_pb2_grpc.SupervisorServiceStub(channel)
        md = (("authorization", f"Bearer {key}"),)
        contract = (await stub.CreateContract(supervisor_pb2.CreateContractRequest(name="bench"), metadata=md)).contract
        request = supervisor_pb2.GetContractRequest(contract_id=contract.id)
        result = await rate(lambda: stub.GetContract(request, metadata=md), seconds)
        await channel.close()
        return result
    finally:
        server.terminate()
        await server.wait()


async def empty(seconds: float) -> float:
    address = f"127.0.0.1:{free_port()}"
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", EMPTY_SERVER, address)
    try:
        channel = await ready(address)
        call = channel.unary_unary("/bench.Empty/Call", request_serializer=None, response_deserializer=None)
        result = await rate(lambda: call(b""), seconds)
        await channel.close()
        return result
    finally:
        server.terminate()
        await server.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MAKIMA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    baseline = await empty(args.seconds)
    print(f"unary    empty grpc.aio handler {baseline:,.0f} calls/s ({CONCURRENCY} concurrent)")
    sqlite = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
    r = await ours(sqlite, args.seconds)
    print(f"unary    GetContract on SQLite {r:,.0f} calls/s | ratio ours/empty {r / baseline:.2f}")
    name = f"makima_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(args.postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = args.postgres_url.rsplit("/", 1)[0] + "/" + name
        r = await ours(url, args.seconds)
        print(f"unary    GetContract on PostgreSQL {r:,.0f} calls/s | ratio ours/empty {r / baseline:.2f}")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
