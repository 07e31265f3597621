"""Timeline benchmarks on PostgreSQL, each printed as a ratio against a baseline measured in this run.

1. ListTimeline page latency at 10k vs 1M events (first page and a page deep in the list).
2. StreamTimeline delivery latency from the write's send, to 1 and to 100 subscribers, vs raw NOTIFY to as many
   subscribers of one LISTEN connection (the p99 ratio at 100 is the target).
3. Reconnect storm: 100 followers replaying 2,000 events at once vs one, and live delivery meanwhile; every
   follower asks for batches of events as the Python client does.
Ingest is measured by bench_ingest.py.

Run: .venv/bin/python bench/bench_timeline.py [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
It creates and drops its own databases.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from _common import dsn, served
from bench_unary import cpu_seconds
from grpc import aio

from makima.client._requests import TimelineCursor
from makima.v1 import (
    history_pb2,
    history_pb2_grpc,
    resources_pb2,
    supervisor_pb2,
    supervisor_pb2_grpc,
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.databases: list[str] = []

    async def fresh_database(self) -> str:
        name = f"makima_bench_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(dsn(self.base_url))
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        self.databases.append(name)
        return self.base_url.rsplit("/", 1)[0] + "/" + name

    async def drop_databases(self) -> None:
        conn = await asyncpg.connect(dsn(self.base_url))
        for name in self.databases:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def fill_timeline(url: str, owner: uuid.UUID, count: int) -> None:
    """COPY `count` history events for one owner, as if written through the API."""
    conn = await asyncpg.connect(dsn(url))
    now = datetime.now(UTC)
    chunk = 100_000
    for start_cursor in range(1, count + 1, chunk):
        rows = [
            (owner, c, "task_events_recorded", f"{c} recorded", "{}", now)
            for c in range(start_cursor, min(start_cursor + chunk, count + 1))
        ]
        await conn.copy_records_to_table(
            "history_events",
            records=rows,
            columns=["owner_id", "cursor", "kind", "summary", "data", "create_time"],
        )
    await conn.execute("UPDATE owners SET timeline_cursor = $1 WHERE id = $2", count, owner)
    await conn.execute("ANALYZE history_events")
    await conn.close()


async def page_latency(
    channel: aio.Channel, md: tuple[tuple[str, str], ...], after: int, runs: int = 300
) -> list[float]:
    stub = history_pb2_grpc.HistoryServiceStub(channel)
    request = history_pb2.ListTimelineRequest(after_cursor=after, page_size=100)
    for _ in range(20):
        await stub.ListTimeline(request, metadata=md)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        page = await stub.ListTimeline(request, metadata=md)
        samples.append((time.perf_counter() - started) * 1000)
        assert len(page.events) == 100
    return samples


async def raw_page_latency(url: str, owner: uuid.UUID, after: int, runs: int = 300) -> list[float]:
    """The same keyset page as a prepared asyncpg query, rows decoded and nothing else."""
    conn = await asyncpg.connect(dsn(url))
    query = await conn.prepare(
        "SELECT * FROM history_events WHERE owner_id = $1 AND cursor > $2 ORDER BY cursor LIMIT 100"
    )
    for _ in range(20):
        await query.fetch(owner, after)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = await query.fetch(owner, after)
        samples.append((time.perf_counter() - started) * 1000)
        assert len(rows) == 100
    await conn.close()
    return samples


async def bench_pages(b: Bench) -> None:
    """Medians of 3 rounds of 300 pages each, at each size and place, ours and raw interleaved."""
    for size in (10_000, 1_000_000):
        url = await b.fresh_database()
        proc, address, secret = await served(url)
        channel = aio.insecure_channel(address)
        await asyncio.wait_for(channel.channel_ready(), 30)
        md = (("authorization", f"Bearer {secret}"),)
        conn = await asyncpg.connect(dsn(url))
        owner = await conn.fetchval("SELECT id FROM owners")
        await conn.close()
        await fill_timeline(url, owner, size)
        for where, after in (("first", 0), ("deep", size - 1_000)):
            ours, raw, cpu = [], [], []
            for _ in range(3):
                started = cpu_seconds(proc.pid)
                samples = await page_latency(channel, md, after)
                cpu.append((cpu_seconds(proc.pid) - started) / (len(samples) + 20) * 1000)
                ours.append(statistics.median(samples))
                raw.append(statistics.median(await raw_page_latency(url, owner, after)))
            o, r = statistics.median(ours), statistics.median(raw)
            print(
                f"page     ListTimeline page of 100, {where} @{size:,}: p50 {o:.2f} ms vs raw keyset {r:.2f} ms "
                f"| ratio ours/raw {o / r:.2f} (target <= 3) | server CPU {statistics.median(cpu):.2f} ms/call"
            )
        await channel.close()
        proc.terminate()
        await proc.wait()


async def delivery_latency(b: Bench, subscribers: int, events: int = 200) -> list[float]:
    proc, address, secret = await served(await b.fresh_database())
    channel = aio.insecure_channel(address)
    await asyncio.wait_for(channel.channel_ready(), 30)
    md = (("authorization", f"Bearer {secret}"),)
    history = history_pb2_grpc.HistoryServiceStub(channel)
    supervisor = supervisor_pb2_grpc.SupervisorServiceStub(channel)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    ready = asyncio.Event()
    subscribed = 0

    async def subscriber() -> None:
        nonlocal subscribed
        call = history.StreamTimeline(history_pb2.StreamTimelineRequest(keep_alive_seconds=1), metadata=md)
        await call.read()  # the first keep-alive: the stream is live
        subscribed += 1
        if subscribed == subscribers:
            ready.set()
        got = 0
        while (item := await call.read()) is not aio.EOF:
            if item.HasField("event"):
                latencies.append((time.perf_counter() - sent[item.event.data["name"]]) * 1000)
                got += 1
                if got == events:
                    call.cancel()
                    return

    readers = [asyncio.create_task(subscriber()) for _ in range(subscribers)]
    await asyncio.wait_for(ready.wait(), 60)
    for i in range(events):
        sent[f"c{i}"] = time.perf_counter()
        await supervisor.CreateContract(supervisor_pb2.CreateContractRequest(name=f"c{i}"), metadata=md)
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    await channel.close()
    proc.terminate()
    await proc.wait()
    return latencies


async def raw_notify_latency(url: str, listeners: int, runs: int = 200) -> list[float]:
    """From a NOTIFY's send to its arrival at each of `listeners` subscribers of one LISTEN connection (as
    a server process holds one), each a task reading its own queue: the floor under StreamTimeline's fan-out."""
    listener = await asyncpg.connect(dsn(url))
    sender = await asyncpg.connect(dsn(url))
    samples: list[float] = []
    sent = 0.0

    async def subscriber(queue: asyncio.Queue[None]) -> None:
        while True:
            await queue.get()
            samples.append((time.perf_counter() - sent) * 1000)

    queues: list[asyncio.Queue[None]] = [asyncio.Queue() for _ in range(listeners)]
    readers = [asyncio.create_task(subscriber(q)) for q in queues]
    await listener.add_listener("bench", lambda *_: [q.put_nowait(None) for q in queues])
    for _ in range(runs):
        sent = time.perf_counter()
        await sender.execute("SELECT pg_notify('bench', 'x')")
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    for reader in readers:
        reader.cancel()
    await listener.close()
    await sender.close()
    return samples


async def bench_stream(b: Bench) -> None:
    one = await delivery_latency(b, 1)
    many = await delivery_latency(b, 100)
    raw_one = await raw_notify_latency(await b.fresh_database(), 1)
    raw_many = await raw_notify_latency(await b.fresh_database(), 100)
    print(
        f"stream   delivery p50/p99 {statistics.median(one):.2f}/{pct(one, 0.99):.2f} ms to 1 subscriber "
        f"(raw NOTIFY {statistics.median(raw_one):.2f}/{pct(raw_one, 0.99):.2f}) | "
        f"{statistics.median(many):.2f}/{pct(many, 0.99):.2f} ms to each of 100 "
        f"(raw NOTIFY to 100 listeners {statistics.median(raw_many):.2f}/{pct(raw_many, 0.99):.2f}) "
        f"| ratio p99 ours/raw at 100 {pct(many, 0.99) / pct(raw_many, 0.99):.1f} (target <= 10)"
    )


# Events per message the storm's followers ask for: what the Python client asks by default.
PER_MESSAGE = TimelineCursor.EVENTS_PER_MESSAGE


def events_of(item: history_pb2.StreamTimelineResponse) -> list[resources_pb2.TimelineEvent]:
    which = item.WhichOneof("item")
    return [item.event] if which == "event" else list(item.events.events) if which == "events" else []


async def replay(address: str, secret: str, history: int) -> None:
    """One follower from cursor 0 until it has every one of `history` events."""
    async with aio.insecure_channel(address) as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        request = history_pb2.StreamTimelineRequest(keep_alive_seconds=30, max_events_per_message=PER_MESSAGE)
        call = stub.StreamTimeline(request, metadata=(("authorization", f"Bearer {secret}"),))
        got = 0
        while got < history:
            got += len(events_of(await call.read()))
        call.cancel()


async def replayers(address: str, secret: str, followers: int, history: int) -> float:
    """Seconds for `followers` replaying at once, each on its own channel, from another process (followers
    live on other machines: sharing this process's CPU with the live followers would time the client)."""
    args = ("--replay", address, secret, str(followers), str(history))
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"the followers' process failed ({proc.returncode})")
    return float(out)


async def storm(b: Bench, followers: int = 100, history: int = 2_000, live: int = 5) -> None:
    """Reconnect storm: `followers` streams replay `history` events from cursor 0 at once (from another
    process), while `live` caught-up streams in this one receive new writes. Prints the storm's catch-up
    time against one follower's and the live delivery latency during the storm."""
    url = await b.fresh_database()
    proc, address, secret = await served(url)
    channel = aio.insecure_channel(address)
    await asyncio.wait_for(channel.channel_ready(), 30)
    md = (("authorization", f"Bearer {secret}"),)
    history_stub = history_pb2_grpc.HistoryServiceStub(channel)
    supervisor = supervisor_pb2_grpc.SupervisorServiceStub(channel)
    conn = await asyncpg.connect(dsn(url))
    owner = await conn.fetchval("SELECT id FROM owners")
    await conn.close()
    await fill_timeline(url, owner, history)

    one = statistics.median([await replayers(address, secret, 1, history) for _ in range(3)])
    sent: dict[str, float] = {}
    latencies: list[float] = []
    live_ready = asyncio.Event()
    subscribed = 0
    storm_over = asyncio.Event()

    async def live_follower() -> None:
        nonlocal subscribed
        call = history_stub.StreamTimeline(
            history_pb2.StreamTimelineRequest(
                after_cursor=history, keep_alive_seconds=1, max_events_per_message=PER_MESSAGE
            ),
            metadata=md,
        )
        await call.read()
        subscribed += 1
        if subscribed == live:
            live_ready.set()
        while (item := await call.read()) is not aio.EOF:
            for event in events_of(item):
                if event.data["name"] in sent:
                    latencies.append((time.perf_counter() - sent[event.data["name"]]) * 1000)
            if storm_over.is_set():
                call.cancel()
                return

    watchers = [asyncio.create_task(live_follower()) for _ in range(live)]
    await asyncio.wait_for(live_ready.wait(), 60)

    async def writer() -> None:
        i = 0
        while not storm_over.is_set():
            sent[f"live{i}"] = time.perf_counter()
            await supervisor.CreateContract(supervisor_pb2.CreateContractRequest(name=f"live{i}"), metadata=md)
            i += 1
            await asyncio.sleep(0.05)

    writing = asyncio.create_task(writer())
    took = await replayers(address, secret, followers, history)
    storm_over.set()
    await writing
    await asyncio.wait_for(asyncio.gather(*watchers), 30)
    await channel.close()
    proc.terminate()
    await proc.wait()
    print(
        f"storm    {followers} followers replaying {history} events: {took:.2f} s vs 1 follower {one:.2f} s "
        f"| ratio {took / one:.2f} (target <= 3) | live delivery during the storm p50/p99 "
        f"{statistics.median(latencies):.1f}/{pct(latencies, 0.99):.1f} ms over {len(latencies)} (target p99 <= 100)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MAKIMA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--only", choices=["pages", "stream", "storm"], help="run one benchmark")
    parser.add_argument("--replay", nargs=4, metavar=("ADDRESS", "KEY", "FOLLOWERS", "EVENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:  # the storm's followers, in a process of their own
        address, secret, followers, history = args.replay
        started = time.perf_counter()
        await asyncio.gather(*(replay(address, secret, int(history)) for _ in range(int(followers))))
        print(time.perf_counter() - started)
        return
    b = Bench(args.postgres_url)
    try:
        for name, run in (("pages", bench_pages), ("stream", bench_stream), ("storm", storm)):
            if args.only in (None, name):
                await run(b)
    finally:
        await b.drop_databases()


if __name__ == "__main__":
    asyncio.run(main())
