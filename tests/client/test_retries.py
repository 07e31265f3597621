"""Retries against real unavailability: a server that starts late, a connection that breaks mid-call."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from makima.client import AsyncClient, Client, RetryPolicy, UnavailableError
from makima.server.app import App
from tests.client.conftest import FAST_RETRY
from tests.client.net import AnswerDroppingProxy, start_server
from tests.helpers import Api, create_contract, free_port
from tests.test_contracts import timeline_of


async def _start_later(database_url: str, port: int, workspace: Path, delay: float) -> App:
    await asyncio.sleep(delay)
    return await start_server(database_url, port, workspace)


async def test_reads_and_writes_wait_for_a_server_that_starts_late(
    api: Api, server: App, database_url: str, tmp_path: Path
) -> None:
    contract = await create_contract(api, "existing")
    port = free_port()
    starting = asyncio.create_task(_start_later(database_url, port, tmp_path, 0.5))
    began = time.monotonic()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", api.key, retry=FAST_RETRY) as client:
            got = await client.get_contract(contract_id=contract.id)
            waited = time.monotonic() - began
            created = await client.create_contract(name="after the outage")
    finally:
        await (await starting).stop(0.5)
    assert got.contract == contract
    assert waited >= 0.5
    kinds = [(e.kind, str(e.contract_id)) for e in await timeline_of(server, api)]
    assert kinds == [("contract_created", contract.id), ("contract_created", created.contract.id)]


async def test_sync_client_waits_for_a_server_that_starts_late(
    api: Api, server: App, database_url: str, tmp_path: Path
) -> None:
    contract = await create_contract(api, "existing")
    port = free_port()
    starting = asyncio.create_task(_start_later(database_url, port, tmp_path, 0.5))
    client = Client(f"127.0.0.1:{port}", api.key, retry=FAST_RETRY)
    try:
        got = await asyncio.to_thread(client.get_contract, contract_id=contract.id)
    finally:
        client.close()
        await (await starting).stop(0.5)
    assert got.contract == contract


async def test_a_mutation_retried_after_a_lost_answer_takes_effect_once(api: Api, server: App) -> None:
    proxy = AnswerDroppingProxy(server.port)
    port = await proxy.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", api.key, retry=FAST_RETRY) as client:
            created = await client.create_contract(name="exactly once")
    finally:
        await proxy.stop()
    assert (proxy.dropped, proxy.connections) == (1, 2)  # the first answer was lost, the call retried
    events = await timeline_of(server, api)
    assert [(e.kind, str(e.contract_id)) for e in events] == [("contract_created", created.contract.id)]


async def test_a_lost_answer_without_retries_is_unavailable(api: Api, server: App) -> None:
    proxy = AnswerDroppingProxy(server.port)
    port = await proxy.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", api.key, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(UnavailableError):
                await client.create_contract(name="answer lost")
    finally:
        await proxy.stop()
    assert proxy.dropped == 1
    assert [e.kind for e in await timeline_of(server, api)] == ["contract_created"]  # done, but unheard of


async def test_retries_give_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.2, max_backoff=0.2)
    began = time.monotonic()
    async with AsyncClient(f"127.0.0.1:{free_port()}", "mk_any", retry=policy) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.get_contract(contract_id="00000000-0000-4000-8000-000000000000")
    assert time.monotonic() - began >= 0.2  # two backoffs of at least 0.1 s each
    assert caught.value.reason == "UNAVAILABLE"  # a transport failure carries no ErrorInfo


async def test_claim_task_is_never_retried() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=2.0)
    began = time.monotonic()
    async with AsyncClient(f"127.0.0.1:{free_port()}", "mk_any", retry=policy) as client:
        with pytest.raises(UnavailableError):
            await client.claim_task(daemon_id="00000000-0000-4000-8000-000000000000")
    assert time.monotonic() - began < 1.0  # a retry would have waited at least 1 s


async def test_the_deadline_covers_every_retry() -> None:
    policy = RetryPolicy(max_attempts=None, initial_backoff=0.05, max_backoff=0.1)
    began = time.monotonic()
    async with AsyncClient(f"127.0.0.1:{free_port()}", "mk_any", retry=policy) as client:
        with pytest.raises(UnavailableError):
            await client.get_contract(contract_id="00000000-0000-4000-8000-000000000000", timeout=0.5)
    assert 0.3 <= time.monotonic() - began < 1.5
