"""Operators manage API keys with makima-server: named owners, listing, expiry and revocation."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import grpc

from makima.server.app import App
from makima.server.domain.auth import CACHE_SECONDS, create_api_key
from makima.server.store.types import utcnow
from tests.helpers import Api, create_contract, fails
from tests.test_server import run

SERVER_BIN = str(Path(sys.executable).parent / "makima-server")


async def makima_server(database_url: str, *argv: str) -> tuple[int, str, str]:
    return await run(SERVER_BIN, *argv, env=os.environ | {"MAKIMA_DATABASE_URL": database_url})


async def key_rows(database_url: str, owner: str) -> list[list[str]]:
    code, out, err = await makima_server(database_url, "list-api-keys", "--owner", owner)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split("\t")[:4] == ["KEY ID", "OWNER", "OWNER ID", "NAME"]
    return [row.split("\t") for row in rows]


async def test_an_owner_named_twice_is_found_not_created_again(server: App, database_url: str) -> None:
    owner = f"alice-{uuid.uuid4().hex[:8]}"
    first = await makima_server(database_url, "create-api-key", "--owner", owner, "--name", "laptop")
    second = await makima_server(database_url, "create-api-key", "--owner", owner, "--expires-in", "30d")
    assert first[0] == second[0] == 0, (first, second)

    rows = await key_rows(database_url, owner)
    assert [(r[1], r[3]) for r in rows] == [(owner, "laptop"), (owner, "-")]
    assert rows[0][2] == rows[1][2]  # one owner
    assert rows[0][6] == "-" and rows[1][6] != "-"  # only the second key expires
    assert [r[4] for r in rows] == [first[1].strip()[:10], second[1].strip()[:10]]  # prefixes, never secrets
    for channel_key in (first[1].strip(), second[1].strip()):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api(channel=channel, owner_id=uuid.UUID(rows[0][2]), key=channel_key)
            assert (await create_contract(api, "named owner")).name == "named owner"


async def test_a_revoked_key_stops_working_within_the_cache_time(server: App, database_url: str, api: Api) -> None:
    await create_contract(api, "before")  # the key is now proven and cached
    rows = await key_rows(database_url, str(api.owner_id))
    code, out, err = await makima_server(database_url, "revoke-api-key", "--key-id", rows[0][0])
    assert code == 0, err
    assert "revoked" in out
    revoked_at = time.monotonic()
    while True:
        try:
            await create_contract(api, "after")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() - revoked_at < CACHE_SECONDS + 2, "a revoked key kept working"
        await asyncio.sleep(0.2)
    assert (await key_rows(database_url, str(api.owner_id)))[0][7] != "-"


async def test_an_expired_key_is_refused(server: App, api: Api) -> None:
    expired = await create_api_key(server.runtime, owner_id=api.owner_id, expire_time=utcnow() - timedelta(seconds=1))
    late = Api(channel=api.channel, owner_id=api.owner_id, key=expired.secret)
    failure = await fails(create_contract(late), grpc.StatusCode.UNAUTHENTICATED)
    assert failure.reason == "INVALID_API_KEY"


async def test_unknown_keys_and_owners_are_one_line(database_url: str) -> None:
    code, _, err = await makima_server(database_url, "revoke-api-key", "--key-id", str(uuid.uuid4()))
    assert (code, err.count("\n")) == (1, 1) and "not found" in err
    code, _, err = await makima_server(database_url, "list-api-keys", "--owner", f"nobody-{uuid.uuid4().hex}")
    assert (code, err.count("\n")) == (1, 1) and "not found" in err
    code, _, err = await makima_server(database_url, "create-api-key", "--owner", "a b")
    assert code == 2 and "--owner" in err
    code, _, err = await makima_server(database_url, "create-api-key", "--owner", "x", "--expires-in", "soon")
    assert code == 2 and "--expires-in" in err
