"""Clients of the real server of tests/conftest.py, authenticated as the test's owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from makima.client import AsyncClient, Client, RetryPolicy
from makima.server.app import App
from tests.helpers import Api

# Short backoffs keep failure tests fast; enough attempts to ride out a server start.
FAST_RETRY = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.3)


@pytest.fixture
def address(server: App) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def client(address: str, api: Api) -> AsyncIterator[AsyncClient]:
    """An async client authenticated as the test's owner."""
    async with AsyncClient(address, api.key, timeout=10, retry=FAST_RETRY) as c:
        yield c


@pytest.fixture
async def sync_client(address: str, api: Api) -> AsyncIterator[Client]:
    """A blocking client of the test's owner; call it through asyncio.to_thread, since the server
    under test runs on this thread's event loop."""
    c = Client(address, api.key, timeout=10, retry=FAST_RETRY)
    yield c
    await asyncio.to_thread(c.close)
