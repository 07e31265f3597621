"""Daemon-held worktrees on the service side: placement, PushCheckpoint, FetchObjects, the commit a
claim starts from, code operations done on the records, and garbage collection of the object store.

The daemon side is played by the test: a local repository in tmp, commits built with dulwich, packs
made by the server's `git.objects.outgoing_pack` (as a daemon would), fetched packs taken in with
`git index-pack` and trees checked with the git command line. Everything goes through the stubs.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.repo import Repo
from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain.objects import MERGE_ABOVE_PACKS
from makima.server.git.objects import outgoing_pack
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.helpers import Api, append_messages, create_task, fails
from tests.objects.helpers import blob, git, ls_tree, pack_bytes, tree
from tests.test_work import claim, get_task, register, report

DAEMON = resources_pb2.WORKTREE_PLACEMENT_DAEMON
SERVICE = resources_pb2.WORKTREE_PLACEMENT_SERVICE
EMPTY_ON_DAEMON = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY, placement=DAEMON)
EMPTY_ON_SERVICE = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
FILE, DIR = 0o100644, 0o040000


@dataclass
class LocalRepo:
    """A daemon's repository: objects fetched from the service, commits built with dulwich."""

    path: Path

    @classmethod
    def create(cls, path: Path) -> LocalRepo:
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        return cls(path)

    def take(self, pack: bytes) -> None:
        """Store a fetched pack, completing it if thin, as a daemon materializing a commit does."""
        git(self.path, "index-pack", "--stdin", "--fix-thin", "--strict", stdin=pack)

    def commit(self, files: dict[str, bytes], parent: str, message: str = "work") -> str:
        """A commit of exactly `files` ('/'-separated paths) on `parent`."""
        objects: list[ShaFile] = []

        def build(node: dict[str, Any]) -> ObjectID:
            result = Tree()
            for name, item in node.items():
                if isinstance(item, dict):
                    result.add(name.encode(), DIR, build(item))
                else:
                    data = Blob.from_string(item)
                    objects.append(data)
                    result.add(name.encode(), FILE, data.id)
            objects.append(result)
            return result.id

        root: dict[str, Any] = {}
        for path, data in files.items():
            *dirs, name = path.split("/")
            node = root
            for part in dirs:
                node = node.setdefault(part, {})
            node[name] = data
        made = Commit()
        made.tree = build(root)
        made.parents = [ObjectID(parent.encode())]
        made.author = made.committer = b"daemon <daemon@localhost>"
        made.author_time = made.commit_time = 1_700_000_000
        made.author_timezone = made.commit_timezone = 0
        made.message = message.encode() + b"\n"
        with Repo(str(self.path)) as repo:
            repo.object_store.add_objects([(obj, None) for obj in [*objects, made]])
        return made.id.decode()

    def pack(self, wanted: str, *haves: str) -> bytes:
        """The thin pack of what a service holding `haves` lacks of `wanted`."""
        with Repo(str(self.path)) as repo:
            return b"".join(outgoing_pack(repo.object_store, wants=[wanted], haves=haves).chunks)

    def checkout(self, commit_sha: str) -> dict[str, bytes]:
        """Check `commit_sha` out with git and return the files of the worktree."""
        git(self.path, "update-ref", "refs/heads/main", commit_sha)
        git(self.path, "checkout", "-q", "-f", "main")
        assert git(self.path, "status", "--porcelain") == b""
        return {
            str(p.relative_to(self.path)): p.read_bytes()
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(self.path).parts
        }


async def push(
    api: Api,
    task_id: str,
    lease_token: str,
    commit_sha: str,
    parent_commit_sha: str,
    pack: bytes,
    *,
    pack_size: int | None = None,
    chunk: int = 65536,
    **header: Any,
) -> daemon_pb2.PushCheckpointResponse:
    async def messages() -> AsyncIterator[daemon_pb2.PushCheckpointRequest]:
        yield daemon_pb2.PushCheckpointRequest(
            header=daemon_pb2.PushCheckpointHeader(
                task_id=task_id,
                lease_token=lease_token,
                commit_sha=commit_sha,
                parent_commit_sha=parent_commit_sha,
                pack_size=len(pack) if pack_size is None else pack_size,
                **header,
            )
        )
        for offset in range(0, len(pack), chunk):
            yield daemon_pb2.PushCheckpointRequest(pack_chunk=pack[offset : offset + chunk])

    return await api.daemon.PushCheckpoint(messages(), metadata=api.md)


async def fetch(api: Api, **request: Any) -> tuple[daemon_pb2.FetchObjectsHeader, bytes]:
    header, data = None, b""
    async for part in api.daemon.FetchObjects(daemon_pb2.FetchObjectsRequest(**request), metadata=api.md):
        if part.WhichOneof("part") == "header":
            assert header is None
            header = part.header
        else:
            assert header is not None
            assert 0 < len(part.pack_chunk) <= 1 << 20
            data += part.pack_chunk
    assert header is not None
    return header, data


async def checkpoints_of(api: Api, task_id: str) -> list[resources_pb2.Checkpoint]:
    """Oldest first."""
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task_id), metadata=api.md)
    return list(reversed(listed.checkpoints))


async def packs_of(server: App, api: Api) -> list[str]:
    """The owner's packs once the merges that pushes start in the background are over."""
    await server.objects.settle()
    return sorted(await server.objects.run(api.owner_id, lambda store: [p.name for p in store.bucket.list_packs()]))


@dataclass
class Running:
    """A daemon-held task claimed by a daemon whose repository holds the start commit."""

    task: resources_pb2.Task
    daemon_id: str
    token: str
    start: str
    repo: LocalRepo


async def run_on_daemon(api: Api, tmp_path: Path, name: str = "d", task: Any = None) -> Running:
    """Create (unless given) a daemon-held task, claim it, and materialize its start commit locally."""
    task = task or await create_task(api, "job", worktree=EMPTY_ON_DAEMON)
    daemon_id = (await register(api, name)).daemon.id
    claimed = (await claim(api, daemon_id)).claimed
    assert claimed.task.id == task.id
    repo = LocalRepo.create(tmp_path / name)
    _header, pack = await fetch(api, task_id=task.id)
    repo.take(pack)
    return Running(claimed.task, daemon_id, claimed.lease_token, claimed.worktree.start_commit_sha, repo)


async def test_a_daemon_held_task_starts_from_an_initial_commit_the_store_holds(api: Api, tmp_path: Path) -> None:
    task = await create_task(api, "job", worktree=EMPTY_ON_DAEMON)
    initial = await checkpoints_of(api, task.id)
    daemon_id = (await register(api)).daemon.id
    claimed = (await claim(api, daemon_id)).claimed
    header, pack = await fetch(api, task_id=task.id)
    repo = LocalRepo.create(tmp_path / "d")
    repo.take(pack)

    assert (task.placement, task.worktree_path, task.branch) == (DAEMON, "", f"makima/{task.id}")
    assert [(c.commit_sha, c.message, c.parent_commit_sha) for c in initial] == [
        (task.head_commit_sha, "initial state", "")
    ]
    assert claimed.worktree.placement == DAEMON
    assert (claimed.worktree.branch, claimed.worktree.start_commit_sha) == (task.branch, task.head_commit_sha)
    assert (header.commit_sha, header.object_count) == (task.head_commit_sha, 2)  # the commit and the empty tree
    assert header.tree_sha == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    assert repo.checkout(header.commit_sha) == {}


async def test_pushes_record_checkpoints_and_send_only_new_objects(api: Api, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    files = {f"src/file_{i}.py": random.Random(i).randbytes(1000).hex().encode() for i in range(20)}
    c1 = run.repo.commit(files, run.start, "first")
    pack1 = run.repo.pack(c1, run.start)
    first = await push(api, run.task.id, run.token, c1, run.start, pack1, message="first")
    c2 = run.repo.commit({**files, "src/file_3.py": b"changed\n", "new.txt": b"new\n"}, c1, "second")
    pack2 = run.repo.pack(c2, c1)
    second = await push(api, run.task.id, run.token, c2, c1, pack2, message="second")

    assert (first.checkpoint.commit_sha, first.checkpoint.parent_commit_sha) == (c1, run.start)
    assert first.checkpoint.kind == resources_pb2.CHECKPOINT_KIND_DAEMON
    assert first.checkpoint.message == "first" and first.checkpoint.branch == run.task.branch
    assert (first.object_count, first.received_bytes) == (20 + 2 + 1, len(pack1))  # blobs, 2 trees, commit
    # Incremental: two blobs, the two trees on their paths and the commit; bytes grow with the change.
    assert (second.object_count, second.received_bytes) == (2 + 2 + 1, len(pack2))
    assert len(pack2) < len(pack1) / 3
    assert second.task.head_commit_sha == c2
    assert [(c.commit_sha, c.message) for c in await checkpoints_of(api, run.task.id)][1:] == [
        (c1, "first"),
        (c2, "second"),
    ]

    # Another daemon (no objects yet) materializes exactly the pushed tree, checked with git.
    other = LocalRepo.create(tmp_path / "other")
    header, pack = await fetch(api, task_id=run.task.id)
    other.take(pack)
    assert (header.commit_sha, header.object_count) == (c2, 3 + 5 + 22)  # commits, trees (one empty), blobs
    assert ls_tree(other.path, c2) == ls_tree(run.repo.path, c2)
    assert other.checkout(c2) == {**files, "src/file_3.py": b"changed\n", "new.txt": b"new\n"}
    # With what it has as haves, only the difference comes, as a thin pack.
    header, pack = await fetch(api, want_commit_sha=c2, have_commit_shas=[c1])
    assert header.object_count == 5 and len(pack) < len(pack2) * 2


async def test_a_resumed_task_starts_on_another_daemon_from_its_last_checkpoint(api: Api, tmp_path: Path) -> None:
    a = await run_on_daemon(api, tmp_path, "a")
    c1 = a.repo.commit({"a.txt": b"one\n"}, a.start)
    await push(api, a.task.id, a.token, c1, a.start, a.repo.pack(c1, a.start))
    c2 = a.repo.commit({"a.txt": b"two\n", "b/c.txt": b"three\n"}, c1)
    await push(api, a.task.id, a.token, c2, c1, a.repo.pack(c2, c1))
    await report(api, a.daemon_id, a.task.id, resources_pb2.TASK_STATUS_INTERRUPTED, lease_token=a.token)
    await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=a.task.id), metadata=api.md)

    b = await run_on_daemon(api, tmp_path, "b", task=a.task)

    assert b.start == c2
    assert ls_tree(b.repo.path, c2) == ls_tree(a.repo.path, c2)
    assert b.repo.checkout(c2) == {"a.txt": b"two\n", "b/c.txt": b"three\n"}
    # B pushes on top of what it started from; A's stale token is refused.
    c3 = b.repo.commit({"a.txt": b"four\n"}, c2)
    await fails(push(api, a.task.id, a.token, c3, c2, b.repo.pack(c3, c2)), PRECONDITION, reason="LEASE_LOST")
    assert (await push(api, b.task.id, b.token, c3, c2, b.repo.pack(c3, c2))).task.head_commit_sha == c3


async def done_after_two_pushes(api: Api, tmp_path: Path) -> tuple[Running, str, str]:
    """A daemon-held task with checkpoints c1 and c2 (its head), no longer running."""
    run = await run_on_daemon(api, tmp_path)
    c1 = run.repo.commit({"a.txt": b"one\n", "keep.txt": b"kept\n"}, run.start)
    await push(api, run.task.id, run.token, c1, run.start, run.repo.pack(c1, run.start))
    await append_messages(api, run.task.id, 0, "after c1", lease_token=run.token)
    c2 = run.repo.commit({"a.txt": b"two\n", "keep.txt": b"kept\n", "new.txt": b"new\n"}, c1)
    await push(api, run.task.id, run.token, c2, c1, run.repo.pack(c2, c1))
    await report(api, run.daemon_id, run.task.id, resources_pb2.TASK_STATUS_INTERRUPTED, lease_token=run.token)
    return run, c1, c2


async def test_a_rewind_on_the_records_is_carried_out_by_the_next_claim(api: Api, tmp_path: Path) -> None:
    run, c1, c2 = await done_after_two_pushes(api, tmp_path)
    target = next(c for c in await checkpoints_of(api, run.task.id) if c.commit_sha == c1)
    request = task_fork_pb2.RewindTaskRequest(
        task_id=run.task.id, checkpoint_id=target.id, mode=task_fork_pb2.REWIND_MODE_BOTH
    )
    done = await api.tasks.RewindTask(request, metadata=api.md)
    rewind = done.rewind_checkpoint
    await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=run.task.id), metadata=api.md)
    other = await run_on_daemon(api, tmp_path, "other", task=run.task)

    assert done.code_rewound and done.conversation_rewound
    # The safety checkpoint is the one that recorded the head: the code before the rewind.
    assert (done.safety_checkpoint.commit_sha, done.safety_checkpoint.kind) == (
        c2,
        resources_pb2.CHECKPOINT_KIND_DAEMON,
    )
    assert done.conversation_snapshot.message_count == 1  # the conversation before the rewind
    assert (rewind.parent_commit_sha, rewind.kind) == (c2, resources_pb2.CHECKPOINT_KIND_REWIND)
    assert rewind.message_count == 0  # the conversation as the rewind left it
    assert done.task.head_commit_sha == rewind.commit_sha == other.start
    # Nothing lost, history linear: the rewind commit sits on c2 and holds c1's tree.
    assert git(other.repo.path, "rev-list", "--topo-order", rewind.commit_sha).decode().split() == [
        rewind.commit_sha,
        c2,
        c1,
        run.start,
    ]
    assert [line.split("\t")[1] for line in ls_tree(other.repo.path, rewind.commit_sha)] == ["a.txt", "keep.txt"]
    assert other.repo.checkout(rewind.commit_sha) == {"a.txt": b"one\n", "keep.txt": b"kept\n"}
    # The next push goes on top of the rewind commit.
    c3 = other.repo.commit({"a.txt": b"three\n"}, rewind.commit_sha)
    await push(api, run.task.id, other.token, c3, rewind.commit_sha, other.repo.pack(c3, rewind.commit_sha))


async def test_code_operations_wait_until_the_task_stops_running(api: Api, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    first = (await checkpoints_of(api, run.task.id))[0]
    rewind = task_fork_pb2.RewindTaskRequest(
        task_id=run.task.id, checkpoint_id=first.id, mode=task_fork_pb2.REWIND_MODE_CODE
    )
    await fails(api.tasks.RewindTask(rewind, metadata=api.md), PRECONDITION, reason="ALREADY_RUNNING")
    again = task_fork_pb2.ResumeTaskFromCheckpointRequest(task_id=run.task.id, checkpoint_id=first.id)
    await fails(api.tasks.ResumeTaskFromCheckpoint(again, metadata=api.md), PRECONDITION, reason="ALREADY_RUNNING")
    cont = task_fork_pb2.ContinueTaskRequest(task_id=run.task.id)
    await fails(api.tasks.ContinueTask(cont, metadata=api.md), PRECONDITION, reason="ALREADY_RUNNING")
    assert (await get_task(api, run.task.id)).head_commit_sha == run.start


async def test_resume_from_a_checkpoint_rewinds_on_the_records(api: Api, tmp_path: Path) -> None:
    run, c1, _c2 = await done_after_two_pushes(api, tmp_path)
    target = next(c for c in await checkpoints_of(api, run.task.id) if c.commit_sha == c1)
    request = task_fork_pb2.ResumeTaskFromCheckpointRequest(task_id=run.task.id, checkpoint_id=target.id)
    done = await api.tasks.ResumeTaskFromCheckpoint(request, metadata=api.md)
    other = await run_on_daemon(api, tmp_path, "other", task=run.task)

    assert done.task.status == resources_pb2.TASK_STATUS_PENDING
    assert other.start == done.rewind_checkpoint.commit_sha == done.task.head_commit_sha
    assert other.repo.checkout(other.start) == {"a.txt": b"one\n", "keep.txt": b"kept\n"}


async def test_forks_and_continuations_start_from_the_source_commit(api: Api, tmp_path: Path) -> None:
    run, c1, c2 = await done_after_two_pushes(api, tmp_path)
    point = next(c for c in await checkpoints_of(api, run.task.id) if c.commit_sha == c1)
    fork = await api.tasks.ForkTask(
        task_fork_pb2.ForkTaskRequest(task_id=run.task.id, checkpoint_id=point.id), metadata=api.md
    )
    continued = await api.tasks.ContinueTask(task_fork_pb2.ContinueTaskRequest(task_id=run.task.id), metadata=api.md)
    forked = await run_on_daemon(api, tmp_path, "f", task=fork.task)
    await report(api, forked.daemon_id, fork.task.id, resources_pb2.TASK_STATUS_COMPLETED, lease_token=forked.token)
    follower = await run_on_daemon(api, tmp_path, "c", task=continued.task)

    assert fork.commit_sha == c1 and fork.task.placement == DAEMON and fork.task.worktree_path == ""
    assert forked.start == c1 and forked.repo.checkout(c1) == {"a.txt": b"one\n", "keep.txt": b"kept\n"}
    assert [c.message for c in await checkpoints_of(api, fork.task.id)] == ["initial state"]
    assert continued.source_checkpoint.commit_sha == c2
    assert continued.source_checkpoint.kind == resources_pb2.CHECKPOINT_KIND_CONTINUATION
    assert follower.start == c2 == continued.task.head_commit_sha


async def test_a_fork_moves_code_between_service_and_daemon(api: Api, tmp_path: Path, server: App) -> None:
    run, c1, _c2 = await done_after_two_pushes(api, tmp_path)
    point = next(c for c in await checkpoints_of(api, run.task.id) if c.commit_sha == c1)
    to_service = task_fork_pb2.ForkTaskRequest(task_id=run.task.id, checkpoint_id=point.id, placement=SERVICE)
    on_service = (await api.tasks.ForkTask(to_service, metadata=api.md)).task
    path = Path(on_service.worktree_path)
    (path / "edited.txt").write_text("on the service")
    edited = (
        await api.tasks.CreateCheckpoint(
            task_fork_pb2.CreateCheckpointRequest(task_id=on_service.id, message="edit"), metadata=api.md
        )
    ).checkpoint
    service_daemon = (await register(api, "on the service")).daemon.id
    assert (await claim(api, service_daemon)).claimed.task.id == on_service.id  # out of the claim queue
    back = task_fork_pb2.ForkTaskRequest(task_id=on_service.id, checkpoint_id=edited.id, placement=DAEMON)
    on_daemon = (await api.tasks.ForkTask(back, metadata=api.md)).task
    daemon = await run_on_daemon(api, tmp_path, "back", task=on_daemon)

    assert on_service.placement == SERVICE and path.is_relative_to(server.settings.workspace_root.resolve())
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name != ".git"} == {
        "a.txt": b"one\n",
        "keep.txt": b"kept\n",
        "edited.txt": b"on the service",
    }
    initial = (await checkpoints_of(api, on_service.id))[0]
    assert initial.commit_sha == c1 and initial.kind == resources_pb2.CHECKPOINT_KIND_INITIAL  # the source commit
    assert git(path, "status", "--porcelain") == b""
    assert daemon.start == edited.commit_sha == on_daemon.head_commit_sha
    assert ls_tree(daemon.repo.path, edited.commit_sha) == ls_tree(path, edited.commit_sha)


async def test_service_held_checkpoints_are_in_the_store(api: Api, tmp_path: Path) -> None:
    task = await create_task(api, "job", worktree=EMPTY_ON_SERVICE)
    path = Path(task.worktree_path)
    (path / "dir").mkdir()
    (path / "dir" / "f.txt").write_text("content")
    made = (
        await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    ).checkpoint
    header, pack = await fetch(api, task_id=task.id)
    repo = LocalRepo.create(tmp_path / "d")
    repo.take(pack)

    assert task.placement == SERVICE and task.head_commit_sha == (await checkpoints_of(api, task.id))[0].commit_sha
    assert header.commit_sha == made.commit_sha == (await get_task(api, task.id)).head_commit_sha
    assert ls_tree(repo.path, made.commit_sha) == ls_tree(path, made.commit_sha)
    assert repo.checkout(made.commit_sha) == {"dir/f.txt": b"content"}


async def test_what_needs_the_live_worktree_of_a_daemon_held_task_is_refused(api: Api, tmp_path: Path) -> None:
    run, c1, c2 = await done_after_two_pushes(api, tmp_path)
    ids = {c.commit_sha: c.id for c in await checkpoints_of(api, run.task.id)}
    compare = task_fork_pb2.CompareCheckpointsRequest(task_id=run.task.id, base_checkpoint_id=ids[c1])
    between = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(
            task_id=run.task.id, base_checkpoint_id=ids[c1], target_checkpoint_id=ids[c2]
        ),
        metadata=api.md,
    )

    assert [(c.path, c.change_type) for c in between.changes] == [
        ("a.txt", task_fork_pb2.FILE_CHANGE_TYPE_MODIFIED),
        ("new.txt", task_fork_pb2.FILE_CHANGE_TYPE_ADDED),
    ]
    await fails(api.tasks.CompareCheckpoints(compare, metadata=api.md), PRECONDITION, reason="WORKTREE_ON_DAEMON")
    checkpoint = task_fork_pb2.CreateCheckpointRequest(task_id=run.task.id)
    await fails(api.tasks.CreateCheckpoint(checkpoint, metadata=api.md), PRECONDITION, reason="WORKTREE_ON_DAEMON")


async def test_a_branch_on_the_records_is_handed_to_the_next_claim(api: Api, tmp_path: Path) -> None:
    """CreateBranch on a daemon-held task records the branch; the next claim names it for the daemon."""
    run, c1, _c2 = await done_after_two_pushes(api, tmp_path)
    ids = {c.commit_sha: c.id for c in await checkpoints_of(api, run.task.id)}

    def branch(name: str) -> task_fork_pb2.CreateBranchRequest:
        return task_fork_pb2.CreateBranchRequest(task_id=run.task.id, checkpoint_id=ids[c1], branch_name=name)

    made = await api.tasks.CreateBranch(branch("review/one"), metadata=api.md)
    exists = grpc.StatusCode.ALREADY_EXISTS
    for taken in ("review/one", "review", "review/one/two", run.task.branch):
        await fails(api.tasks.CreateBranch(branch(taken), metadata=api.md), exists, reason="BRANCH_EXISTS")
    await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=run.task.id), metadata=api.md)
    claimed = (await claim(api, run.daemon_id)).claimed
    running = await fails(api.tasks.CreateBranch(branch("later"), metadata=api.md), PRECONDITION)
    listed = await api.history.ListTimeline(
        history_pb2.ListTimelineRequest(task_id=run.task.id, kinds=[resources_pb2.TIMELINE_EVENT_KIND_BRANCH_CREATED]),
        metadata=api.md,
    )

    assert (made.ref, made.commit_sha) == ("refs/heads/review/one", c1)
    assert [(b.name, b.commit_sha) for b in claimed.worktree.branches] == [("review/one", c1)]
    assert running.reason == "ALREADY_RUNNING"
    assert [e.data["ref"] for e in listed.events] == ["refs/heads/review/one"]


async def test_a_push_on_another_head_is_a_conflict_and_stores_nothing(api: Api, server: App, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    c1 = run.repo.commit({"a": b"1"}, run.start)
    await push(api, run.task.id, run.token, c1, run.start, run.repo.pack(c1, run.start))
    stale = run.repo.commit({"a": b"2"}, run.start)
    before = (await packs_of(server, api), await checkpoints_of(api, run.task.id))

    failure = await fails(
        push(api, run.task.id, run.token, stale, run.start, run.repo.pack(stale, run.start)),
        grpc.StatusCode.ABORTED,
        reason="CHECKPOINT_CONFLICT",
    )

    assert failure.metadata == {"task": run.task.id, "head_commit_sha": c1, "parent_commit_sha": run.start}
    assert (await packs_of(server, api), await checkpoints_of(api, run.task.id)) == before


async def test_a_push_without_the_lease_stores_nothing(api: Api, server: App, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    await report(api, run.daemon_id, run.task.id, resources_pb2.TASK_STATUS_INTERRUPTED, lease_token=run.token)
    c1 = run.repo.commit({"a": b"1"}, run.start)
    before = (await packs_of(server, api), await checkpoints_of(api, run.task.id))

    await fails(
        push(api, run.task.id, run.token, c1, run.start, run.repo.pack(c1, run.start)),
        PRECONDITION,
        reason="LEASE_LOST",
    )

    assert (await packs_of(server, api), await checkpoints_of(api, run.task.id)) == before
    assert (await get_task(api, run.task.id)).head_commit_sha == run.start


async def test_hostile_uploads_are_refused_and_record_nothing(api: Api, server: App, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    parent = run.start

    def hand_made(*entries: tuple[bytes, int, ShaFile], include: bool = True) -> tuple[bytes, str]:
        top = tree(*entries)
        made = Commit()
        made.tree = top.id
        made.parents = [ObjectID(parent.encode())]
        made.author = made.committer = b"x <x@x>"
        made.author_time = made.commit_time = 1_700_000_000
        made.author_timezone = made.commit_timezone = 0
        made.message = b"hostile\n"
        objects = [made, top] + ([obj for _n, _m, obj in entries] if include else [])
        return pack_bytes(objects), made.id.decode()

    good, good_sha = hand_made((b"ok.txt", FILE, blob(b"fine\n")))
    corrupt = good[:-1] + bytes([good[-1] ^ 0xFF])  # the trailing SHA-1 of the pack no longer matches
    missing, missing_sha = hand_made((b"gone.txt", FILE, blob(b"never sent\n")), include=False)
    escape, escape_sha = hand_made((b"..", DIR, tree((b"x", FILE, blob(b"out\n")))))
    dot_git, dot_git_sha = hand_made((b".git", DIR, tree((b"config", FILE, blob(b"[core]\n")))))
    cases = [
        (corrupt, good_sha, {"problem": "corrupt"}, "INVALID_PACK"),
        (missing, missing_sha, {"problem": "missing_object"}, "INVALID_PACK"),
        (escape, escape_sha, {"problem": "unsafe_path", "path": ".."}, "INVALID_PACK"),
        (dot_git, dot_git_sha, {"problem": "unsafe_path", "path": ".git"}, "INVALID_PACK"),
        (good, "0" * 40, {"problem": "missing_commit"}, "INVALID_PACK"),  # a commit the pack does not hold
        (good, "not-a-sha", {"field": "header.commit_sha"}, "INVALID_ARGUMENT"),
    ]
    before = (await packs_of(server, api), await checkpoints_of(api, run.task.id))
    for pack, sha, metadata, reason in cases:
        failure = await fails(push(api, run.task.id, run.token, sha, parent, pack), INVALID, reason=reason)
        assert metadata.items() <= failure.metadata.items(), failure
    too_big = await fails(push(api, run.task.id, run.token, good_sha, parent, good, pack_size=600 << 20), INVALID)
    assert too_big.fields == ["header.pack_size"] and too_big.metadata["max"] == str(512 << 20)
    more_than_declared = await fails(
        push(api, run.task.id, run.token, good_sha, parent, good, pack_size=len(good) - 1), INVALID
    )
    assert more_than_declared.fields == ["header.pack_size"]

    assert (await packs_of(server, api), await checkpoints_of(api, run.task.id)) == before
    assert (await get_task(api, run.task.id)).head_commit_sha == parent
    # The good pack itself is taken.
    assert (await push(api, run.task.id, run.token, good_sha, parent, good)).task.head_commit_sha == good_sha


async def test_owners_never_reach_each_others_code(api: Api, other_api: Api, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    c1 = run.repo.commit({"secret": b"mine"}, run.start)
    await push(api, run.task.id, run.token, c1, run.start, run.repo.pack(c1, run.start))

    await fails(fetch(other_api, want_commit_sha=c1), grpc.StatusCode.NOT_FOUND)
    await fails(fetch(other_api, task_id=run.task.id), grpc.StatusCode.NOT_FOUND)
    await fails(fetch(api, want_commit_sha="1" * 40), grpc.StatusCode.NOT_FOUND)
    await fails(fetch(api), INVALID)
    c2 = run.repo.commit({"secret": b"theirs"}, c1)
    await fails(push(other_api, run.task.id, "", c2, c1, run.repo.pack(c2, c1)), grpc.StatusCode.NOT_FOUND)


async def test_a_retried_push_answers_as_the_first_one(api: Api, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    c1 = run.repo.commit({"a": b"1"}, run.start)
    pack = run.repo.pack(c1, run.start)
    request_id = str(uuid.uuid4())
    first = await push(api, run.task.id, run.token, c1, run.start, pack, request_id=request_id)
    again = await push(api, run.task.id, run.token, c1, run.start, pack, request_id=request_id)

    assert again == first
    assert [c.commit_sha for c in await checkpoints_of(api, run.task.id)] == [run.start, c1]
    other = run.repo.commit({"a": b"2"}, c1)
    await fails(
        push(api, run.task.id, run.token, other, c1, run.repo.pack(other, c1), request_id=request_id),
        INVALID,
        reason="REQUEST_ID_REUSED",
    )
    # A retry without the request_id finds the task moved on: never a second checkpoint.
    await fails(push(api, run.task.id, run.token, c1, run.start, pack), grpc.StatusCode.ABORTED)
    assert len(await checkpoints_of(api, run.task.id)) == 2


async def test_a_push_to_a_service_held_task_is_refused(api: Api) -> None:
    task = await create_task(api, "job", worktree=EMPTY_ON_SERVICE)
    daemon_id = (await register(api)).daemon.id
    claimed = (await claim(api, daemon_id)).claimed
    assert claimed.worktree.placement == SERVICE and claimed.worktree.start_commit_sha == task.head_commit_sha
    await fails(
        push(api, task.id, claimed.lease_token, "a" * 40, task.head_commit_sha, b""),
        PRECONDITION,
        reason="WORKTREE_ON_SERVICE",
    )


async def test_garbage_collection_keeps_what_the_records_name(api: Api, server: App, tmp_path: Path) -> None:
    run = await run_on_daemon(api, tmp_path)
    c1 = run.repo.commit({"a": b"kept\n"}, run.start)
    await push(api, run.task.id, run.token, c1, run.start, run.repo.pack(c1, run.start))
    # A pack the service stores and then refuses to record (its commit's parent is not the one
    # announced): nothing names it.
    orphan = run.repo.commit({"a": b"orphan\n"}, run.start)
    failure = await fails(push(api, run.task.id, run.token, orphan, c1, run.repo.pack(orphan, run.start)), INVALID)
    assert failure.fields == ["header.commit_sha"]
    named = await packs_of(server, api)

    young = await server.collector.collect(api.owner_id)  # the default grace keeps everything
    await server.collector.collect_round()  # the scheduled round, with the same grace
    done = await server.collector.collect(api.owner_id, grace=timedelta(0))

    assert young is not None and young.removed == []
    # The orphan's pack went; the live objects are in one pack (merged after the pushes, or repacked).
    assert done is not None and done.removed and set(done.removed) <= set(named)
    assert len(await packs_of(server, api)) == 1
    assert await server.objects.run(api.owner_id, lambda store: store.lacking([run.start, c1, orphan])) == [orphan]
    other = LocalRepo.create(tmp_path / "after-gc")
    other.take((await fetch(api, task_id=run.task.id))[1])
    assert other.checkout(c1) == {"a": b"kept\n"}


async def test_a_daemon_held_task_can_start_from_a_repository_of_the_workspace(
    api: Api, server: App, tmp_path: Path
) -> None:
    source = server.settings.workspace_root / "repos" / str(uuid.uuid4())
    source.mkdir(parents=True)
    git(source, "init", "-q", "-b", "main")
    (source / "lib.py").write_text("v1\n")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "one")
    git(source, "tag", "v1")
    (source / "lib.py").write_text("v2\n")
    git(source, "commit", "-q", "-a", "-m", "two")
    tagged = git(source, "rev-parse", "v1").decode().strip()
    spec = resources_pb2.WorktreeSpec(
        source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=str(source), ref="v1", placement=DAEMON
    )
    task = await create_task(api, "job", worktree=spec)
    run = await run_on_daemon(api, tmp_path, task=task)

    assert run.start == task.head_commit_sha == tagged and task.worktree_path == ""  # the commit itself
    assert git(run.repo.path, "rev-list", "--topo-order", run.start).decode().split() == [tagged]
    assert ls_tree(run.repo.path, run.start) == ls_tree(source, tagged)
    assert run.repo.checkout(run.start) == {"lib.py": b"v1\n"}
    assert not (server.settings.workspace_root / ".scratch").exists() or not any(
        (server.settings.workspace_root / ".scratch").iterdir()
    )
    unknown = resources_pb2.WorktreeSpec(
        source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=str(source), ref="nope", placement=DAEMON
    )
    failure = await fails(create_task(api, "bad", worktree=unknown), INVALID)
    assert failure.fields == ["worktree.ref"]


async def test_a_conversation_rewind_with_code_moves_the_head_on_the_records(api: Api, tmp_path: Path) -> None:
    run, _c1, c2 = await done_after_two_pushes(api, tmp_path)  # one message, appended after c1
    request = supervisor_pb2.RewindConversationRequest(task_id=run.task.id, to_message_index=0, rewind_code=True)
    await append_messages(api, run.task.id, 1, "a second message")
    done = await api.supervisor.RewindConversation(request, metadata=api.md)
    task = await get_task(api, run.task.id)
    newest = (await checkpoints_of(api, run.task.id))[-1]

    assert done.code_rewound and done.code_checkpoint.commit_sha == c2  # the newest checkpoint at message 1
    assert done.safety_checkpoint.commit_sha == c2
    assert (newest.kind, newest.parent_commit_sha, newest.message_count) == (
        resources_pb2.CHECKPOINT_KIND_REWIND,
        c2,
        1,
    )
    assert task.head_commit_sha == newest.commit_sha and task.message_count == 1


async def test_two_server_processes_serve_each_others_uploads(api: Api, server: App, tmp_path: Path) -> None:
    """A second server with its own workspace root on the same database, as on another machine."""
    settings = Settings(
        listen="127.0.0.1:0", database_url=server.settings.database_url, workspace_root=tmp_path / "elsewhere"
    )
    second = await start(settings)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            there = Api(channel=channel, owner_id=api.owner_id, key=api.key)
            run = await run_on_daemon(api, tmp_path)
            c1 = run.repo.commit({"a": b"pushed here\n"}, run.start)
            await push(api, run.task.id, run.token, c1, run.start, run.repo.pack(c1, run.start))
            c2 = run.repo.commit({"a": b"pushed there\n"}, c1)
            await push(there, run.task.id, run.token, c2, c1, run.repo.pack(c2, c1))
            fetched_there = LocalRepo.create(tmp_path / "there")
            fetched_there.take((await fetch(there, want_commit_sha=c1))[1])
            fetched_here = LocalRepo.create(tmp_path / "here")
            fetched_here.take((await fetch(api, task_id=run.task.id))[1])
    finally:
        await second.stop(1)

    assert fetched_there.checkout(c1) == {"a": b"pushed here\n"}
    assert fetched_here.checkout(c2) == {"a": b"pushed there\n"}


async def test_the_packs_of_many_pushes_are_merged(api: Api, server: App, tmp_path: Path) -> None:
    """Each push stores a pack; once an owner has more than MERGE_ABOVE_PACKS, they are merged in the
    background (as `git repack --geometric` would), so the count stays bounded."""
    run = await run_on_daemon(api, tmp_path)
    parent = run.start
    counts = []
    for n in range(3 * MERGE_ABOVE_PACKS):
        commit_sha = run.repo.commit({f"file{i}.txt": f"{i} at push {n}\n".encode() for i in range(n + 1)}, parent)
        await push(api, run.task.id, run.token, commit_sha, parent, run.repo.pack(commit_sha, parent))
        parent = commit_sha
        counts.append(len(await packs_of(server, api)))

    # Unmerged there would be one more pack per push (and the start commit's).
    assert max(counts) <= MERGE_ABOVE_PACKS + 1 and counts[-1] < len(counts)
    other = LocalRepo.create(tmp_path / "other")
    other.take((await fetch(api, task_id=run.task.id))[1])
    expected = {
        f"file{i}.txt": f"{i} at push {3 * MERGE_ABOVE_PACKS - 1}\n".encode() for i in range(3 * MERGE_ABOVE_PACKS)
    }
    assert other.checkout(parent) == expected
