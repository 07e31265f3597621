"""Page tokens cannot be forged, replayed elsewhere, or carry a key that makes a read misbehave.

A token is base64url(version | key id | payload | HMAC-SHA256 tag); the tests edit each part the
way a client could, and mint correctly signed tokens with the server's own key ring to check that
the keys inside are still validated strictly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from makima.server.api.paging import encode_token
from makima.server.app import App
from makima.server.domain.errors import InvalidArgument
from makima.server.domain.page_tokens import PURPOSE, PageTokenKeys, TokenScope, rotate
from makima.server.domain.runtime import Principal, Runtime
from makima.server.store import migrate
from makima.server.store.engine import Database
from makima.server.store.models import ServerSecret
from makima.v1 import history_pb2, resources_pb2, supervisor_pb2
from tests.helpers import Api, append_messages, create_contract, create_task, fails, record_events

HEAD = 17  # version byte + 16-byte key id
TAG = 32
EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)


def unpack(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def pack(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def principal(api: Api) -> Principal:
    return Principal(owner_id=api.owner_id, api_key_id=uuid.uuid4())


async def refused(call: Any) -> None:
    failure = await fails(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == ["page_token"], failure


async def supervised_conversation(api: Api, *contents: str) -> tuple[str, Any]:
    """A contract whose supervisor said `contents`; returns the contract id and a request factory."""
    contract = await create_contract(api)
    started = await api.supervisor.StartSupervisor(
        supervisor_pb2.StartSupervisorRequest(contract_id=contract.id, instructions="plan"), metadata=api.md
    )
    task = started.supervisor_task
    await append_messages(api, task.id, task.message_count, *contents)
    return contract.id, lambda **kw: history_pb2.GetSupervisorConversationRequest(contract_id=contract.id, **kw)


async def task_conversation(api: Api, *contents: str) -> tuple[str, Any]:
    task = await create_task(api, "mine")
    await append_messages(api, task.id, 0, *contents)
    return task.id, lambda **kw: history_pb2.GetTaskConversationRequest(task_id=task.id, **kw)


@pytest.mark.parametrize("which", ["task", "supervisor"])
async def test_an_edited_token_is_refused_and_other_owners_messages_never_appear(
    api: Api, other_api: Api, which: str
) -> None:
    theirs = await create_task(other_api, "theirs")
    await append_messages(other_api, theirs.id, 0, "secret of another owner", "another secret")
    _, request = await (task_conversation if which == "task" else supervised_conversation)(api, "a", "b", "c")
    rpc = api.history.GetTaskConversation if which == "task" else api.history.GetSupervisorConversation

    first = await rpc(request(page_size=1), metadata=api.md)
    raw = unpack(first.next_page_token)
    assert json.loads(raw[HEAD:-TAG]) == [1]
    # The reproduction: the key becomes [-1000], re-encoded, with page_size 1000.
    edited = raw[:HEAD] + b"[-1000]" + raw[-TAG:]
    await refused(rpc(request(page_size=1000, page_token=pack(edited)), metadata=api.md))
    # The token format before signing: base64 of {"s": scope, "k": key}.
    legacy = pack(json.dumps({"s": "x", "k": [-1000]}).encode())
    await refused(rpc(request(page_size=1000, page_token=legacy), metadata=api.md))

    seen, token = [], ""
    while True:
        page = await rpc(request(page_size=1000 if token else 1, page_token=token), metadata=api.md)
        seen += [m.content for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert seen[-3:] == ["a", "b", "c"]
    assert not {"secret of another owner", "another secret"} & set(seen)


async def test_a_token_is_bound_to_its_rpc_owner_and_filters(api: Api, other_api: Api) -> None:
    task_id, conversation = await task_conversation(api, "a", "b")
    await record_events(api, task_id, [(1, 1), (2, 1)])
    token = (await api.history.GetTaskConversation(conversation(page_size=1), metadata=api.md)).next_page_token
    # Same filter bytes (task_id is field 1 of both requests), same key shape: only the RPC differs.
    await refused(
        api.history.ListTaskEvents(
            history_pb2.ListTaskEventsRequest(task_id=task_id, page_token=token), metadata=api.md
        )
    )
    # Another owner replaying it, on the same task or on a task of its own.
    await refused(other_api.history.GetTaskConversation(conversation(page_token=token), metadata=other_api.md))
    their_task = await create_task(other_api)
    await refused(
        other_api.history.GetTaskConversation(
            history_pb2.GetTaskConversationRequest(task_id=their_task.id, page_token=token), metadata=other_api.md
        )
    )
    # Other filters: another snapshot, other kinds, another start cursor.
    await refused(
        api.history.GetTaskConversation(conversation(page_token=token, snapshot_id=str(uuid.uuid4())), metadata=api.md)
    )
    timeline = await api.history.ListTimeline(history_pb2.ListTimelineRequest(page_size=1), metadata=api.md)
    for changed in (
        history_pb2.ListTimelineRequest(page_token=timeline.next_page_token, kinds=[1]),
        history_pb2.ListTimelineRequest(page_token=timeline.next_page_token, after_cursor=1),
        history_pb2.ListTimelineRequest(page_token=timeline.next_page_token, task_id=task_id),
    ):
        await refused(api.history.ListTimeline(changed, metadata=api.md))
    # The untouched token still works, with any page size.
    again = await api.history.GetTaskConversation(conversation(page_size=7, page_token=token), metadata=api.md)
    assert [m.content for m in again.messages] == ["b"]


async def test_damaged_tokens_are_refused(api: Api) -> None:
    _, conversation = await task_conversation(api, "a", "b")
    token = (await api.history.GetTaskConversation(conversation(page_size=1), metadata=api.md)).next_page_token
    raw = unpack(token)

    async def check(bad: str) -> None:
        await refused(api.history.GetTaskConversation(conversation(page_token=bad), metadata=api.md))

    for i in range(len(raw)):  # one flipped bit in the version, the key id, the payload or the tag
        await check(pack(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]))
    for cut in (1, TAG, len(raw) - HEAD, len(raw) - 1):
        await check(pack(raw[:-cut]))
    await check(token[:-1])  # a base64 length no encoder produces
    for bad in ("garbage!", "é" * 10, "A" * 5000, pack(raw + b"\x00"), pack(b"\x02" + raw[1:])):
        await check(bad)
    # Padding written out in full is the same token.
    padded = token + "=" * (-len(token) % 4)
    ok = await api.history.GetTaskConversation(conversation(page_token=padded), metadata=api.md)
    assert [m.content for m in ok.messages] == ["b"]


async def test_correctly_signed_tokens_with_bad_keys_are_refused(api: Api, server: App) -> None:
    """Defence in depth: even with the server's own key, a key out of range is INVALID_ARGUMENT."""
    keys = server.page_tokens
    task = await create_task(api, "coder", worktree=EMPTY)
    await append_messages(api, task.id, 0, "a", "b")
    await record_events(api, task.id, [(1, 1)])
    contract = await create_contract(api)
    _, supervisor = await supervised_conversation(api, "x")
    me = principal(api)

    async def mint(request: Any, key: list[Any]) -> Any:
        request.page_token = await encode_token(keys, request, me, key)
        return request

    history = api.history
    naive, row = "2026-01-01T00:00:00", str(uuid.uuid4())
    for call, request in (
        (history.ListCheckpoints, history_pb2.ListCheckpointsRequest(task_id=task.id)),
        (history.ListConversationSnapshots, history_pb2.ListConversationSnapshotsRequest(task_id=task.id)),
    ):
        for key in (
            [naive, row],
            ["yesterday", row],
            ["0001-01-01T00:00:00+14:00", row],  # before year 1 in UTC
            ["2026-01-01T00:00:00+00:00", "nope"],
            [naive],
            [1, 2],
        ):
            await refused(call(await mint(request, key), metadata=api.md))
        aware = await call(await mint(request, ["2100-01-01T00:00:00+00:00", row]), metadata=api.md)
        assert len(aware.checkpoints if call is history.ListCheckpoints else aware.snapshots) == 1

    too_big = 18446744073709551616
    positions = (
        (history.GetTaskConversation, history_pb2.GetTaskConversationRequest(task_id=task.id)),
        (history.GetSupervisorConversation, supervisor(page_size=1)),
        (history.ListTaskEvents, history_pb2.ListTaskEventsRequest(task_id=task.id)),
        (history.ListTimeline, history_pb2.ListTimelineRequest()),
        (history.GetContractHistory, history_pb2.GetContractHistoryRequest(contract_id=contract.id)),
    )
    for call, request in positions:
        for key in ([-1], [-1000], [too_big], [2**63], [1.5], [True], ["1"], [], [1, 2], [None]):
            await refused(call(await mint(request, key), metadata=api.md))
        await call(await mint(request, [2**63 - 1]), metadata=api.md)  # the largest key is fine

    # A payload that is not a key list at all, correctly signed.
    scope = TokenScope(rpc="/makima.v1.HistoryService/ListTimeline", owner_id=api.owner_id, filters=b"")
    for payload in (b'{"k":[1]}', b"\xff", b"", b"1e999"):
        token = pack(await keys.seal(scope, payload))
        await refused(history.ListTimeline(history_pb2.ListTimelineRequest(page_token=token), metadata=api.md))


async def test_non_token_inputs_at_the_int64_edge(api: Api) -> None:
    await create_contract(api)
    page = await api.history.ListTimeline(history_pb2.ListTimelineRequest(after_cursor=2**63 - 1), metadata=api.md)
    assert list(page.events) == [] and page.next_page_token == ""


def _rotate(database_url: str, *args: str) -> uuid.UUID:
    """Rotate from another process, as an operator would."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("makima-server")),
            "rotate-page-token-key",
            "--database-url",
            database_url,
            *args,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"new page-token key ([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    return uuid.UUID(found[1])


async def test_a_key_rotated_in_by_another_process_signs_and_old_tokens_keep_working(
    api: Api, server: App, database_url: str
) -> None:
    for i in range(3):
        await create_contract(api, f"c{i}")
    timeline = api.history.ListTimeline
    before = (await timeline(history_pb2.ListTimelineRequest(page_size=1), metadata=api.md)).next_page_token

    new_key = await asyncio.to_thread(_rotate, database_url)
    # Another server process started after the rotation signs with the new key...
    other_process = PageTokenKeys(server.runtime)
    await other_process.load()
    assert other_process.signing_key_id == new_key
    request = history_pb2.ListTimelineRequest(page_size=1)
    request.page_token = await encode_token(other_process, request, principal(api), [1])
    # ...and this one, which did not know that key, reloads its keys and accepts the token.
    await asyncio.sleep(server.page_tokens.miss_interval)  # an earlier unknown key may have just reloaded
    page = await timeline(request, metadata=api.md)
    assert [e.cursor for e in page.events] == [2]
    assert unpack(page.next_page_token)[1:HEAD] == new_key.bytes  # the newest key signs from now on
    # A token signed before the rotation still verifies.
    assert [
        e.cursor for e in (await timeline(history_pb2.ListTimelineRequest(page_token=before), metadata=api.md)).events
    ] == [2, 3]

    # Dropping every older key: once processes refresh, tokens of the dropped keys are refused.
    assert await asyncio.to_thread(_rotate, database_url, "--keep", "2") != new_key
    await server.page_tokens.load()  # what the periodic refresh does
    await refused(timeline(history_pb2.ListTimelineRequest(page_token=before), metadata=api.md))
    assert (await timeline(history_pb2.ListTimelineRequest(page_token=page.next_page_token), metadata=api.md)).events


async def test_a_token_signed_by_an_unknown_key_is_refused(api: Api, empty_database_url: str) -> None:
    """A key of another deployment (another database) verifies nothing here, even after a reload."""
    db = Database(empty_database_url)
    try:
        await migrate.upgrade(db)
        elsewhere = PageTokenKeys(Runtime(db))
        await elsewhere.load()
        request = history_pb2.ListTimelineRequest()
        request.page_token = await encode_token(elsewhere, request, principal(api), [0])
    finally:
        await db.dispose()
    await refused(api.history.ListTimeline(request, metadata=api.md))


async def test_processes_starting_together_create_one_key(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        await migrate.upgrade(db)
        rings = [PageTokenKeys(Runtime(db)) for _ in range(6)]
        await asyncio.gather(*(ring.load() for ring in rings))
        async with db.read() as session:
            rows = list((await session.execute(select(ServerSecret).where(ServerSecret.purpose == PURPOSE))).scalars())
    finally:
        await db.dispose()
    assert len(rows) == 1
    assert {ring.signing_key_id for ring in rings} == {rows[0].id}


async def test_a_ring_refreshes_its_keys_and_bounds_reloads_for_unknown_keys(empty_database_url: str) -> None:
    """Rotations and removals reach a process by its periodic refresh; made-up key ids reload rarely."""
    scope = TokenScope(rpc="/makima.v1.HistoryService/ListTimeline", owner_id=uuid.uuid4(), filters=b"")
    db = Database(empty_database_url)
    try:
        await migrate.upgrade(db)
        rt = Runtime(db)
        fresh = PageTokenKeys(rt, refresh_seconds=0)
        steady = PageTokenKeys(rt, miss_interval=3600)
        await fresh.load()
        await steady.load()
        old_token = await steady.seal(scope, b"[1]")

        rotated = await rotate(rt)
        assert (await fresh.seal(scope, b"[1]"))[1:HEAD] == rotated.key_id.bytes
        assert steady.signing_key_id != rotated.key_id  # no refresh yet, and no token named the new key
        # The first unknown key id reloads (and finds the rotated key)...
        assert await steady.open(scope, await fresh.seal(scope, b"[2]")) == b"[2]"
        assert steady.signing_key_id == rotated.key_id
        # ...but within `miss_interval` another unknown id does not reach the database again.
        newer = await rotate(rt)
        with pytest.raises(InvalidArgument):
            await steady.open(scope, await fresh.seal(scope, b"[3]"))
        assert fresh.signing_key_id == newer.key_id

        dropped = await rotate(rt, keep=1)
        assert dropped.removed == 3 and dropped.remaining == 1
        with pytest.raises(InvalidArgument):
            await fresh.open(scope, old_token)  # refreshed: the dropped key verifies nothing
        assert await steady.open(scope, old_token) == b"[1]"  # until this process refreshes too
        with pytest.raises(InvalidArgument):
            await rotate(rt, keep=0)
    finally:
        await db.dispose()
