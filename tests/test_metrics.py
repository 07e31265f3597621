"""Prometheus metrics on --metrics-listen, scraped while the server works (one process and --workers 2)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from makima.server.store.engine import Database
from makima.v1 import history_pb2, supervisor_pb2
from tests.helpers import Api, create_contract, create_task, fails, free_port
from tests.test_server import run
from tests.test_work import claim, register

SERVER_BIN = str(Path(sys.executable).parent / "makima-server")
CREATE = "/makima.v1.SupervisorService/CreateContract"
GET = "/makima.v1.SupervisorService/GetContract"
STREAM = "/makima.v1.HistoryService/StreamTimeline"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, keyed by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scraped_until(port: int, ready: object, seconds: float = 20) -> dict:  # type: ignore[type-arg]
    """Scrape until `ready(samples)` holds (sampled gauges and the sweeper run every second or two)."""
    give_up = time.monotonic() + seconds
    while True:
        samples = await asyncio.to_thread(scrape, port)
        if ready(samples) or time.monotonic() > give_up:  # type: ignore[operator]
            return samples
        await asyncio.sleep(0.3)


@asynccontextmanager
async def served(database_url: str, tmp_path: Path, *argv: str) -> AsyncIterator[tuple[Api, int, int]]:
    port, metrics_port = free_port(), free_port()
    env = os.environ | {"MAKIMA_DATABASE_URL": database_url, "MAKIMA_WORKSPACE_ROOT": str(tmp_path / "ws")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    code, key, err = await run(SERVER_BIN, "create-api-key", "--owner", f"metrics-{uuid.uuid4().hex[:8]}", env=env)
    assert code == 0, err
    proc = await asyncio.create_subprocess_exec(
        SERVER_BIN,
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
            yield Api(channel=channel, owner_id=uuid.uuid4(), key=key.strip()), metrics_port, port
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err_bytes.decode()[-3000:]


async def test_metrics_while_the_server_works(empty_database_url: str, tmp_path: Path) -> None:
    async with served(empty_database_url, tmp_path, "--lease-seconds", "1", "--sweep-seconds", "1") as (api, port, _):
        for name in ("a", "b", "c"):
            await create_contract(api, name)
        missing = supervisor_pb2.GetContractRequest(contract_id=str(uuid.uuid4()))
        await fails(api.supervisor.GetContract(missing, metadata=api.md), grpc.StatusCode.NOT_FOUND)
        stream = api.history.StreamTimeline(history_pb2.StreamTimelineRequest(), metadata=api.md)
        while not (await asyncio.wait_for(stream.read(), 10)).HasField("replay_ended"):
            pass
        await create_task(api, "queued")
        await create_task(api, "claimed then lost")
        daemon = (await register(api)).daemon
        assert (await claim(api, daemon.id)).HasField("claimed")  # and no heartbeat: its lease expires

        samples = await scraped_until(
            port,
            lambda s: value(s, "makima_lease_expiries_total") >= 1 and value(s, "makima_pending_tasks") >= 1,
        )
        assert value(samples, "makima_rpcs_total", method=CREATE, code="OK") == 3
        assert value(samples, "makima_rpcs_total", method=GET, code="NOT_FOUND") == 1
        assert value(samples, "makima_rpc_duration_seconds_count", method=CREATE) == 3
        assert value(samples, "makima_rpc_duration_seconds_bucket", method=CREATE, le="+Inf") == 3
        assert value(samples, "makima_open_streams", method=STREAM) == 1
        assert value(samples, "makima_stream_lag_events_count") >= 1
        assert value(samples, "makima_task_claims_total") == 1
        assert value(samples, "makima_lease_expiries_total") == 1
        assert value(samples, "makima_pending_tasks") == 1  # "queued"; the claimed one is interrupted
        assert value(samples, "makima_db_pool_size") == Database.POOL_SIZE
        assert ("makima_db_pool_connections_in_use", frozenset()) in samples

        stream.cancel()
        samples = await scraped_until(port, lambda s: value(s, "makima_open_streams", method=STREAM) == 0)
        assert value(samples, "makima_open_streams", method=STREAM) == 0
        assert value(samples, "makima_rpcs_total", method=STREAM, code="CANCELLED") == 1


@pytest.mark.postgresql_only
async def test_metrics_add_up_over_workers(empty_database_url: str, tmp_path: Path) -> None:
    """--workers 2: the parent serves the sum of both workers' metrics (prometheus multiprocess mode)."""
    async with served(empty_database_url, tmp_path, "--workers", "2") as (api, port, grpc_port):
        # Separate connections, so that SO_REUSEPORT spreads them over both workers.
        for _ in range(6):
            async with aio.insecure_channel(
                f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                await create_contract(Api(channel=channel, owner_id=api.owner_id, key=api.key), "spread")
        pools = 2 * Database.POOL_SIZE  # a pool per worker, summed
        samples = await scraped_until(port, lambda s: value(s, "makima_db_pool_size") == pools)
        assert value(samples, "makima_rpcs_total", method=CREATE, code="OK") == 6
        assert value(samples, "makima_db_pool_size") == pools
