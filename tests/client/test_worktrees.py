"""The daemon side of daemon-held worktrees through the client: `push_checkpoint` and `fetch_objects`
(async and sync, retried with one request_id), and `DaemonWorktrees` (prepare, checkpoint, and how a
stale claim, a lost lease or objects the service no longer holds are answered)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from dulwich.objects import Commit, ObjectID

from makima.client import (
    AbortedError,
    AsyncClient,
    Client,
    DaemonWorktrees,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from makima.server.app import App
from makima.v1 import daemon_pb2, resources_pb2
from makima.worktree import LocalWorktree
from tests.client.conftest import FAST_RETRY
from tests.client.net import AnswerDroppingProxy
from tests.helpers import Api
from tests.objects.helpers import blob, git, pack_bytes, tree

DAEMON = resources_pb2.WORKTREE_PLACEMENT_DAEMON
SERVICE = resources_pb2.WORKTREE_PLACEMENT_SERVICE
EMPTY = resources_pb2.WorktreeSpec.SOURCE_EMPTY
INTERRUPTED = resources_pb2.TASK_STATUS_INTERRUPTED
FILE, DIR = 0o100644, 0o040000


async def claim_new(client: AsyncClient, placement: int = DAEMON) -> tuple[str, daemon_pb2.ClaimedTask]:
    """A new task with an empty worktree at `placement`, claimed by a new daemon."""
    spec = resources_pb2.WorktreeSpec(source=EMPTY, placement=placement)
    await client.create_task(name="job", worktree=spec)
    daemon_id = (await client.register_daemon(name="d")).daemon.id
    return daemon_id, (await client.claim_task(daemon_id=daemon_id)).claimed


async def claim_again(client: AsyncClient, daemon_id: str, claimed: daemon_pb2.ClaimedTask) -> daemon_pb2.ClaimedTask:
    """Interrupt the task, resume it and claim it again: a new lease, same worktree."""
    await client.report_task_status(
        daemon_id=daemon_id, task_id=claimed.task.id, status=INTERRUPTED, lease_token=claimed.lease_token
    )
    await client.resume_task(task_id=claimed.task.id)
    again = (await client.claim_task(daemon_id=daemon_id)).claimed
    assert again.task.id == claimed.task.id
    return again


def files_of(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(path).parts
    }


async def checkpoints_of(client: AsyncClient, task_id: str) -> list[resources_pb2.Checkpoint]:
    """Oldest first."""
    return list(reversed([c async for c in client.list_checkpoints.items(task_id=task_id)]))


async def test_push_and_fetch_through_the_async_and_the_sync_client(
    client: AsyncClient, sync_client: Client, tmp_path: Path
) -> None:
    _daemon_id, claimed = await claim_new(client)
    start = claimed.worktree.start_commit_sha
    with LocalWorktree.init(tmp_path / "local", branch=claimed.worktree.branch) as local:
        parts = [p async for p in client.fetch_objects(want_commit_sha=start)]
        local.apply_pack([p.pack_chunk for p in parts[1:]], commit=start)
        local.materialize(start)
        (local.path / "a.txt").write_bytes(b"pushed\n")
        commit = local.checkpoint("c1", parent=start).id.decode()
        pack = b"".join(local.outgoing(commit, known=[start]).chunks)
        header = daemon_pb2.PushCheckpointHeader(
            task_id=claimed.task.id,
            lease_token=claimed.lease_token,
            commit_sha=commit,
            parent_commit_sha=start,
            message="from the async client",
        )
        pushed = await client.push_checkpoint(header, pack=pack)
        (local.path / "a.txt").write_bytes(b"pushed by the sync client\n")
        second = local.checkpoint("c2", parent=commit).id.decode()
        synced = await asyncio.to_thread(
            sync_client.push_checkpoint,
            task_id=claimed.task.id,
            lease_token=claimed.lease_token,
            commit_sha=second,
            parent_commit_sha=commit,
            pack=b"".join(local.outgoing(second, known=[commit]).chunks),
        )
    fetched = await asyncio.to_thread(lambda: list(sync_client.fetch_objects(task_id=claimed.task.id)))
    with pytest.raises(NotFoundError):
        await asyncio.to_thread(lambda: list(sync_client.fetch_objects(want_commit_sha="1" * 40)))
    with pytest.raises(NotFoundError):
        [p async for p in client.fetch_objects(want_commit_sha="1" * 40)]

    assert parts[0].header.commit_sha == start and all(p.WhichOneof("part") == "pack_chunk" for p in parts[1:])
    assert (pushed.checkpoint.commit_sha, pushed.checkpoint.message) == (commit, "from the async client")
    assert pushed.received_bytes == len(pack)  # pack_size was set from the pack
    assert synced.task.head_commit_sha == second
    assert fetched[0].header.commit_sha == second
    with LocalWorktree.init(tmp_path / "other", branch="main") as other:
        other.apply_pack([p.pack_chunk for p in fetched[1:]], commit=second)
        other.materialize(second)
    assert files_of(other.path) == {"a.txt": b"pushed by the sync client\n"}


async def test_a_push_and_a_fetch_whose_answers_are_lost_are_retried(
    client: AsyncClient, api: Api, server: App, tmp_path: Path
) -> None:
    """The proxy breaks a new connection when the server starts to answer: the fetch is asked again,
    and the push, recorded before its answer was lost, is retried with the same request_id (its pack
    read again) and answered as the first time."""
    _daemon_id, claimed = await claim_new(client)
    proxy = AnswerDroppingProxy(server.port, drops=1)
    port = await proxy.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", api.key, timeout=10, retry=FAST_RETRY) as fetching:
            path = await DaemonWorktrees(fetching, tmp_path).prepare(claimed)
        (path / "a.txt").write_text("once")
        proxy.drops_left = 1
        async with AsyncClient(f"127.0.0.1:{port}", api.key, timeout=10, retry=FAST_RETRY) as pushing:
            made = await DaemonWorktrees(pushing, tmp_path).checkpoint(claimed, "exactly once")
    finally:
        await proxy.stop()

    assert (proxy.dropped, proxy.connections) == (2, 4)
    assert made is not None
    checkpoints = await checkpoints_of(client, claimed.task.id)
    assert [c.commit_sha for c in checkpoints] == [claimed.worktree.start_commit_sha, made.commit_sha]
    assert git(path, "rev-parse", "HEAD").decode().strip() == made.commit_sha


async def test_prepare_starts_from_exactly_the_claimed_commit(client: AsyncClient, tmp_path: Path) -> None:
    daemon_id, claimed = await claim_new(client)
    worktrees = DaemonWorktrees(client, tmp_path / "daemon")
    path = await worktrees.prepare(claimed)
    (path / ".gitignore").write_text("*.log\n")
    (path / "kept.txt").write_text("checkpointed\n")
    first = await worktrees.checkpoint(claimed, "first")
    (path / "kept.txt").write_text("never checkpointed\n")
    (path / "untracked.txt").write_text("never checkpointed\n")
    (path / "debug.log").write_text("ignored\n")
    again = await claim_again(client, daemon_id, claimed)

    assert await worktrees.prepare(again) == path
    assert first is not None and again.worktree.start_commit_sha == first.commit_sha
    assert files_of(path) == {".gitignore": b"*.log\n", "kept.txt": b"checkpointed\n", "debug.log": b"ignored\n"}
    assert git(path, "status", "--porcelain") == b""
    # The next checkpoint goes on top of what the new claim started from.
    (path / "kept.txt").write_text("second\n")
    second = await worktrees.checkpoint(again, "second")
    assert second is not None and second.parent_commit_sha == first.commit_sha


async def test_a_stale_view_and_a_lost_lease_are_typed_errors(client: AsyncClient, tmp_path: Path) -> None:
    daemon_id, claimed = await claim_new(client)
    worktrees = DaemonWorktrees(client, tmp_path)
    path = await worktrees.prepare(claimed)
    (path / "a.txt").write_text("one")
    first = await worktrees.checkpoint(claimed, "one")
    # A second process of the daemon, with the same claim, still thinks the task is at its start.
    stale = DaemonWorktrees(client, tmp_path)
    (path / "a.txt").write_text("two")
    with pytest.raises(AbortedError) as conflict:
        await stale.checkpoint(claimed, "two")
    await client.report_task_status(
        daemon_id=daemon_id, task_id=claimed.task.id, status=INTERRUPTED, lease_token=claimed.lease_token
    )
    with pytest.raises(FailedPreconditionError) as lost:
        await worktrees.checkpoint(claimed, "three")

    assert first is not None
    assert conflict.value.reason == "CHECKPOINT_CONFLICT"
    assert conflict.value.metadata["head_commit_sha"] == first.commit_sha
    assert lost.value.reason == "LEASE_LOST"
    assert [c.commit_sha for c in await checkpoints_of(client, claimed.task.id)][1:] == [first.commit_sha]


async def test_checkpoints_asked_for_at_once_go_one_on_top_of_the_other(client: AsyncClient, tmp_path: Path) -> None:
    _daemon_id, claimed = await claim_new(client)
    worktrees = DaemonWorktrees(client, tmp_path)
    path = await worktrees.prepare(claimed)
    (path / "a.txt").write_text("one")

    made = await asyncio.gather(*(worktrees.checkpoint(claimed, f"at once {i}") for i in range(3)))

    assert all(m is not None for m in made)
    chain = [claimed.worktree.start_commit_sha, *(m.commit_sha for m in made if m is not None)]
    assert [m.parent_commit_sha for m in made if m is not None] == chain[:-1]
    assert [c.commit_sha for c in await checkpoints_of(client, claimed.task.id)] == chain


async def test_a_push_the_service_cannot_complete_is_sent_again_whole(
    client: AsyncClient, api: Api, server: App, tmp_path: Path
) -> None:
    """The service lost the objects of a commit the daemon knows it held (as if collected): the thin
    pack refers to them, is refused with INVALID_PACK missing_object, and the full pack is taken."""
    _daemon_id, claimed = await claim_new(client)
    worktrees = DaemonWorktrees(client, tmp_path)
    path = await worktrees.prepare(claimed)

    def pack_names() -> list[str]:
        return [p.name for p in server.objects.open(api.owner_id).bucket.list_packs()]

    await server.objects.settle()  # merges of packs that pushes start in the background
    before = await asyncio.to_thread(pack_names)
    (path / "a.txt").write_text("one")
    first = await worktrees.checkpoint(claimed, "one")
    assert first is not None
    await server.objects.settle()
    for name in set(await asyncio.to_thread(pack_names)) - set(before):
        await server.objects.run(api.owner_id, lambda store, name=name: store.bucket.remove_pack(name))
    assert await server.objects.run(api.owner_id, lambda store: store.lacking([first.commit_sha])) != []
    (path / "b.txt").write_text("two")

    second = await worktrees.checkpoint(claimed, "two")

    assert second is not None and second.parent_commit_sha == first.commit_sha
    assert await server.objects.run(api.owner_id, lambda store: store.lacking([first.commit_sha])) == []
    with LocalWorktree.init(tmp_path / "fetched", branch="main") as fetched:
        parts = [p async for p in client.fetch_objects(want_commit_sha=second.commit_sha)]
        fetched.apply_pack([p.pack_chunk for p in parts[1:]], commit=second.commit_sha)
        fetched.materialize(second.commit_sha)
    assert files_of(fetched.path) == {"a.txt": b"one", "b.txt": b"two"}


async def test_a_hostile_pack_is_refused_as_a_typed_error(client: AsyncClient, tmp_path: Path) -> None:
    _daemon_id, claimed = await claim_new(client)
    start = claimed.worktree.start_commit_sha
    content = blob(b"out\n")
    inner = tree((b"x", FILE, content))
    top = tree((b"..", DIR, inner))
    made = Commit()
    made.tree = top.id
    made.parents = [ObjectID(start.encode())]
    made.author = made.committer = b"x <x@x>"
    made.author_time = made.commit_time = 1_700_000_000
    made.author_timezone = made.commit_timezone = 0
    made.message = b"hostile\n"
    hostile = pack_bytes([made, top, inner, content])

    with pytest.raises(InvalidArgumentError) as refused:
        await client.push_checkpoint(
            task_id=claimed.task.id,
            lease_token=claimed.lease_token,
            commit_sha=made.id.decode(),
            parent_commit_sha=start,
            pack=hostile,
        )

    assert (refused.value.reason, refused.value.metadata["problem"]) == ("INVALID_PACK", "unsafe_path")
    assert [c.commit_sha for c in await checkpoints_of(client, claimed.task.id)] == [start]


async def test_service_held_and_worktree_less_tasks(client: AsyncClient, tmp_path: Path) -> None:
    _daemon_id, claimed = await claim_new(client, SERVICE)
    worktrees = DaemonWorktrees(client, tmp_path)
    path = await worktrees.prepare(claimed)
    (path / "made.txt").write_text("on the service's machine")
    made = await worktrees.checkpoint(claimed, "by the service")
    await client.create_task(name="no worktree")
    daemon_id = (await client.register_daemon(name="plain")).daemon.id
    plain = (await client.claim_task(daemon_id=daemon_id)).claimed
    plain_path = await worktrees.prepare(plain)

    assert path == Path(claimed.task.worktree_path)
    assert made is not None and (made.kind, made.message) == (resources_pb2.CHECKPOINT_KIND_MANUAL, "by the service")
    assert git(path, "status", "--porcelain") == b""
    assert plain.task.placement == resources_pb2.WORKTREE_PLACEMENT_UNSPECIFIED
    assert plain_path == tmp_path / plain.task.id and plain_path.is_dir() and not os.listdir(plain_path)
    assert await worktrees.checkpoint(plain, "nothing") is None


async def test_prepare_creates_the_branches_recorded_for_the_task(client: AsyncClient, tmp_path: Path) -> None:
    """A branch CreateBranch recorded while the task was stopped is made by the next prepare; one the
    daemon already has is left where it is."""
    daemon_id, claimed = await claim_new(client)
    worktrees = DaemonWorktrees(client, tmp_path)
    path = await worktrees.prepare(claimed)
    (path / "a.txt").write_text("one")
    first = await worktrees.checkpoint(claimed, "one")
    (path / "a.txt").write_text("two")
    second = await worktrees.checkpoint(claimed, "two")
    assert first is not None and second is not None
    git(path, "branch", "mine", second.commit_sha)
    await client.report_task_status(
        daemon_id=daemon_id, task_id=claimed.task.id, status=INTERRUPTED, lease_token=claimed.lease_token
    )
    for name in ("review", "mine"):
        await client.create_branch(task_id=claimed.task.id, checkpoint_id=first.id, branch_name=name)
    await client.resume_task(task_id=claimed.task.id)
    again = (await client.claim_task(daemon_id=daemon_id)).claimed

    fresh = await DaemonWorktrees(client, tmp_path / "other").prepare(again)
    await worktrees.prepare(again)

    for repo in (fresh, path):
        assert git(repo, "rev-parse", "refs/heads/review").decode().strip() == first.commit_sha
        assert git(repo, "status", "--porcelain") == b""
    assert git(fresh, "rev-parse", "refs/heads/mine").decode().strip() == first.commit_sha
    assert git(path, "rev-parse", "refs/heads/mine").decode().strip() == second.commit_sha  # kept
