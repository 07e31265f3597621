"""Daemon-held worktrees end to end, through the Python client as a daemon uses it (issue 11, part 4).

Daemons keep their worktrees in directories of their own under tmp, outside the service's workspace
root, as on other machines; `makima.client.DaemonWorktrees` materializes what each claim names and
uploads checkpoints. The git command line is the oracle for every worktree a daemon ends up with:
its tree, `git status`, the modes `git ls-files -s` lists, and the bytes of every file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc import aio

from makima.client import AsyncClient, DaemonWorktrees
from makima.server.app import App
from makima.v1 import daemon_pb2, resources_pb2, task_fork_pb2
from tests.client.conftest import FAST_RETRY
from tests.helpers import Api, free_port
from tests.objects.helpers import git
from tests.test_fencing import own_server

DAEMON = resources_pb2.WORKTREE_PLACEMENT_DAEMON
REPOSITORY = resources_pb2.WorktreeSpec.SOURCE_REPOSITORY
EMPTY = resources_pb2.WorktreeSpec.SOURCE_EMPTY
INTERRUPTED = resources_pb2.TASK_STATUS_INTERRUPTED
COMPLETED = resources_pb2.TASK_STATUS_COMPLETED
# A file name that is not UTF-8: git and the worktree library keep its bytes as they are.
LATIN1_NAME = os.fsdecode(b"caf\xe9.txt")
BINARY = bytes(range(256)) * 8 + b"\x00\xff\x00"

# What a directory holds, git's way: path -> ("file" | "exec", bytes) or ("link", target).
Files = dict[str, tuple[str, bytes | str]]
# A worktree as the git command line sees it (see `state`).
State = tuple[str, str, bytes, dict[str, str], Files]

SOURCE: Files = {
    ".gitignore": ("file", b"build/\n*.log\n"),
    "README.md": ("file", b"# app\n"),
    "docs/old.md": ("file", b"outdated\n"),
    "notes.txt": ("file", b"notes\n"),
    "src/app.py": ("file", b"print('source')\n"),
    "tools/run.sh": ("file", b"#!/bin/sh\necho run\n"),
}
# Daemon A's first checkpoint: a binary file, an executable bit, a deletion, a symlink, a file
# name that is not UTF-8, and an edit; an ignored file beside them is never part of the task.
FIRST: Files = {
    **{path: item for path, item in SOURCE.items() if path != "docs/old.md"},
    "src/app.py": ("file", b"print('first')\n"),
    "tools/run.sh": ("exec", b"#!/bin/sh\necho run\n"),
    "assets/logo.bin": ("file", BINARY),
    "latest": ("link", "src/app.py"),
    LATIN1_NAME: ("file", b"latin-1 name\n"),
}
# A file the source's .gitignore ignores: left out of every checkpoint, never removed by a daemon.
IGNORED: Files = {"build/out.o": ("file", b"ignored\n")}
# Its second: an edit, a new nested file, another deletion, the symlink retargeted.
SECOND: Files = {
    **{path: item for path, item in FIRST.items() if path != "notes.txt"},
    "src/app.py": ("file", b"print('second')\n"),
    "src/pkg/mod.py": ("file", b"x = 1\n"),
    "latest": ("link", "README.md"),
}


def write(root: Path, files: Files) -> None:
    """Make `root` hold exactly `files`, besides `.git` and the IGNORED files."""
    for path, _item in files_of(root).items():
        if path not in files and path not in IGNORED:
            (root / path).unlink()
    for path, (kind, data) in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or (kind == "link" and target.exists()):
            target.unlink()
        if kind == "link":
            assert isinstance(data, str)
            os.symlink(data, target)
            continue
        assert isinstance(data, bytes)
        target.write_bytes(data)
        target.chmod(0o755 if kind == "exec" else 0o644)
    for directory, dirs, names in os.walk(root, topdown=False):
        if ".git" not in Path(directory).relative_to(root).parts and not dirs and not names:
            os.rmdir(directory)


def files_of(root: Path) -> Files:
    """What `root` holds, its `.git` left out; symlinks as links, never followed."""
    found: Files = {}
    for directory, dirs, names in os.walk(root):
        links = [d for d in dirs if os.path.islink(os.path.join(directory, d))]
        dirs[:] = [d for d in dirs if d not in links and not (directory == os.fspath(root) and d == ".git")]
        for name in [*names, *links]:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                found[relative] = ("link", os.readlink(path))
            else:
                executable = os.stat(path).st_mode & stat.S_IXUSR
                found[relative] = ("exec" if executable else "file", Path(path).read_bytes())
    return found


def head_tree(root: Path) -> str:
    return git(root, "rev-parse", "HEAD^{tree}").decode().strip()


def tree_of(root: Path, commit: str) -> str:
    return git(root, "rev-parse", f"{commit}^{{tree}}").decode().strip()


def staged_modes(root: Path) -> dict[str, str]:
    """`git ls-files -s`: path -> mode of every entry of the index."""
    modes = {}
    for record in git(root, "ls-files", "-s", "-z").split(b"\0"):
        if record:
            info, path = record.split(b"\t", 1)
            modes[os.fsdecode(path)] = info.split()[0].decode()
    return modes


def modes_of(files: Files) -> dict[str, str]:
    """The modes git gives `files`."""
    return {path: {"file": "100644", "exec": "100755", "link": "120000"}[kind] for path, (kind, _) in files.items()}


def state(root: Path) -> State:
    """A worktree as the git command line sees it: HEAD, its tree, `git status`, the modes of the
    index (`git ls-files -s`) and the files on disk."""
    head = git(root, "rev-parse", "HEAD").decode().strip()
    return head, head_tree(root), git(root, "status", "--porcelain"), staged_modes(root), files_of(root)


def holding(commit: str, files: Files, *, ignored: Files | None = None) -> State:
    """The `state` of a clean worktree at `commit` holding `files` (and the `ignored` files beside them)."""
    return commit, git_tree(files), b"", modes_of(files), {**files, **(ignored or {})}


def git_tree(files: Files) -> str:
    """The tree git itself makes of `files` (`git add -A && git write-tree` in a scratch repository)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        git(root, "init", "-q")
        write(root, files)
        git(root, "add", "-A")
        return git(root, "write-tree").decode().strip()


def make_source(path: Path) -> Path:
    """A repository of the service's workspace, committed with the git command line."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    write(path, SOURCE)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "source")
    return path


@dataclass
class Daemon:
    """A daemon on a machine of its own: its registration and its worktrees directory."""

    client: AsyncClient
    id: str
    worktrees: DaemonWorktrees

    @classmethod
    async def start(cls, client: AsyncClient, name: str, machine: Path) -> Daemon:
        registered = await client.register_daemon(name=name, hostname=machine.name)
        return cls(client, registered.daemon.id, DaemonWorktrees(client, machine))

    async def claim(self, task_id: str) -> daemon_pb2.ClaimedTask:
        claimed = (await self.client.claim_task(daemon_id=self.id)).claimed
        assert claimed.task.id == task_id
        return claimed

    async def report(self, claimed: daemon_pb2.ClaimedTask, status: int) -> None:
        await self.client.report_task_status(
            daemon_id=self.id, task_id=claimed.task.id, status=status, lease_token=claimed.lease_token
        )

    @asynccontextmanager
    async def beating(self, task_id: str) -> AsyncIterator[None]:
        """Keep the daemon's lease on the task meanwhile; leaving it is the daemon dying."""

        async def beat() -> None:
            while True:
                await self.client.heartbeat(daemon_id=self.id, task_ids=[task_id])
                await asyncio.sleep(0.2)

        running = asyncio.create_task(beat())
        try:
            yield
        finally:
            running.cancel()


async def wait_for_status(client: AsyncClient, task_id: str, status: int) -> resources_pb2.Task:
    for _ in range(100):
        task = (await client.get_task(task_id=task_id)).task
        if task.status == status:
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} never reached status {status}")


def outside(root: Path, *machines: Path) -> None:
    for machine in machines:
        assert not machine.resolve().is_relative_to(root.resolve()), f"{machine} is under the workspace root"


@pytest.fixture
async def fast_leases(empty_database_url: str, tmp_path: Path) -> AsyncIterator[tuple[App, AsyncClient]]:
    """A server of its own with leases of one second, swept every 0.2 s, and a client of one owner."""
    async with own_server(empty_database_url, tmp_path / "service", lease_seconds=1, sweep_seconds=0.2) as served:
        app, api = served
        async with AsyncClient(f"127.0.0.1:{app.port}", api.key, timeout=30, retry=FAST_RETRY) as client:
            yield app, client


@pytest.fixture
async def client(server: App, api: Api) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}", api.key, timeout=30, retry=FAST_RETRY) as c:
        yield c


async def test_a_killed_daemons_task_resumes_on_another_machine_from_its_checkpoint(
    fast_leases: tuple[App, AsyncClient], tmp_path: Path
) -> None:
    app, client = fast_leases
    machine_a, machine_b = tmp_path / "machine-a", tmp_path / "machine-b"
    outside(app.settings.workspace_root, machine_a, machine_b)
    source = make_source(app.settings.workspace_root / "repos" / "app")
    spec = resources_pb2.WorktreeSpec(source=REPOSITORY, repository=str(source), placement=DAEMON)
    task = (await client.create_task(name="agent", worktree=spec)).task

    a = await Daemon.start(client, "a", machine_a)
    claimed_a = await a.claim(task.id)
    async with a.beating(task.id):
        dir_a = await a.worktrees.prepare(claimed_a)
        started = state(dir_a)
        write(dir_a, {**FIRST, **IGNORED})
        first = await a.worktrees.checkpoint(claimed_a, "first")
        write(dir_a, SECOND)
        second = await a.worktrees.checkpoint(claimed_a, "second")
        (dir_a / "src" / "app.py").write_text("never checkpointed\n")
    # Daemon A is killed: its heartbeats stop, its lease runs out and the sweeper interrupts the task.
    await wait_for_status(client, task.id, INTERRUPTED)
    assert first is not None and second is not None
    resumed = await client.resume_task_from_checkpoint(task_id=task.id, checkpoint_id=second.id)

    b = await Daemon.start(client, "b", machine_b)
    claimed_b = await b.claim(task.id)
    async with b.beating(task.id):
        dir_b = await b.worktrees.prepare(claimed_b)
        materialized = state(dir_b)
        (dir_b / "src" / "app.py").write_text("print('third')\n")
        third = await b.worktrees.checkpoint(claimed_b, "third")
        await b.report(claimed_b, COMPLETED)

    assert started == holding(claimed_a.worktree.start_commit_sha, SOURCE)
    assert started[1] == tree_of(source, "HEAD")
    assert (dir_a, dir_b) == (machine_a / task.id, machine_b / task.id)
    assert [git_tree(FIRST), git_tree(SECOND)] == [tree_of(dir_a, first.commit_sha), tree_of(dir_a, second.commit_sha)]
    assert second.parent_commit_sha == first.commit_sha
    # B starts from the commit the resume left on the records, whose tree is the second checkpoint's:
    # neither A's ignored build/ nor its edit that was never checkpointed.
    start = claimed_b.worktree.start_commit_sha
    assert start == resumed.task.head_commit_sha == resumed.rewind_checkpoint.commit_sha
    assert materialized == holding(start, SECOND)
    assert third is not None and third.parent_commit_sha == start
    assert state(dir_b) == holding(third.commit_sha, {**SECOND, "src/app.py": ("file", b"print('third')\n")})
    assert (await client.get_task(task_id=task.id)).task.head_commit_sha == third.commit_sha
    checkpoints = [c async for c in client.list_checkpoints.items(task_id=task.id)]
    assert [c.commit_sha for c in reversed(checkpoints)] == [
        claimed_a.worktree.start_commit_sha,
        first.commit_sha,
        second.commit_sha,
        start,
        third.commit_sha,
    ]


async def test_a_fork_and_a_rewind_on_the_records_are_carried_out_by_the_claiming_daemons(
    client: AsyncClient, server: App, tmp_path: Path
) -> None:
    machine_a, machine_b = tmp_path / "machine-a", tmp_path / "machine-b"
    outside(server.settings.workspace_root, machine_a, machine_b)
    spec = resources_pb2.WorktreeSpec(source=EMPTY, placement=DAEMON)
    task = (await client.create_task(name="agent", worktree=spec)).task
    a = await Daemon.start(client, "a", machine_a)
    claimed_a = await a.claim(task.id)
    dir_a = await a.worktrees.prepare(claimed_a)
    write(dir_a, {**FIRST, **IGNORED})
    first = await a.worktrees.checkpoint(claimed_a, "first")
    write(dir_a, SECOND)
    second = await a.worktrees.checkpoint(claimed_a, "second")
    (dir_a / "src" / "app.py").write_text("never checkpointed\n")
    await a.report(claimed_a, INTERRUPTED)
    assert first is not None and second is not None

    # A fork from the first checkpoint, made on the records, is carried out by daemon B.
    fork = (await client.fork_task(task_id=task.id, checkpoint_id=first.id)).task
    b = await Daemon.start(client, "b", machine_b)
    claimed_fork = await b.claim(fork.id)
    dir_fork = await b.worktrees.prepare(claimed_fork)
    forked = state(dir_fork)
    await b.report(claimed_fork, COMPLETED)

    # A rewind of the task to its first checkpoint, made on the records, is carried out by daemon A
    # restarted on its machine, in the directory it left with the second checkpoint and more.
    rewound = await client.rewind_task(task_id=task.id, checkpoint_id=first.id, mode=task_fork_pb2.REWIND_MODE_CODE)
    await client.resume_task(task_id=task.id)
    restarted = await Daemon.start(client, "a, restarted", machine_a)
    claimed_again = await restarted.claim(task.id)
    dir_again = await restarted.worktrees.prepare(claimed_again)
    rewound_state = state(dir_again)
    (dir_again / "src" / "app.py").write_text("print('after the rewind')\n")
    after = await restarted.worktrees.checkpoint(claimed_again, "after the rewind")

    assert (dir_fork, dir_again) == (machine_b / fork.id, dir_a)
    assert claimed_fork.worktree.start_commit_sha == first.commit_sha == fork.head_commit_sha
    assert forked == holding(first.commit_sha, FIRST)
    rewind_commit = rewound.rewind_checkpoint.commit_sha
    assert rewound.code_rewound and rewound.safety_checkpoint.commit_sha == second.commit_sha
    assert claimed_again.worktree.start_commit_sha == rewind_commit
    # The first checkpoint's tree; the ignored file A left stays, its edit never checkpointed goes.
    assert rewound_state == holding(rewind_commit, FIRST, ignored=IGNORED)
    # Nothing was lost: the rewind commit sits on the second checkpoint, history stays linear.
    assert git(dir_again, "rev-list", "--first-parent", rewind_commit).decode().split() == [
        rewind_commit,
        second.commit_sha,
        first.commit_sha,
        claimed_a.worktree.start_commit_sha,
    ]
    assert git(dir_again, "show", f"{second.commit_sha}:src/app.py") == b"print('second')\n"
    assert after is not None and after.parent_commit_sha == rewind_commit


@pytest.mark.postgresql_only
async def test_two_server_processes_serve_each_others_uploads_and_downloads(
    client: AsyncClient, server: App, api: Api, tmp_path: Path
) -> None:
    """A second `makima-server serve` process with a workspace root of its own, on the same PostgreSQL
    database, as on another machine: what one takes in, the other hands out, both ways."""
    port = free_port()
    env = os.environ | {
        "MAKIMA_LISTEN": f"127.0.0.1:{port}",
        "MAKIMA_DATABASE_URL": server.settings.database_url,
        "MAKIMA_WORKSPACE_ROOT": str(tmp_path / "elsewhere"),
    }
    with (tmp_path / "second-server.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "makima-server"), "serve", env=env, stdout=log, stderr=log
        )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
        async with AsyncClient(f"127.0.0.1:{port}", api.key, timeout=30, retry=FAST_RETRY) as there:
            spec = resources_pb2.WorktreeSpec(source=EMPTY, placement=DAEMON)
            task = (await client.create_task(name="agent", worktree=spec)).task
            one = await Daemon.start(client, "one", tmp_path / "machine-1")
            claimed = await one.claim(task.id)
            path = await one.worktrees.prepare(claimed)
            write(path, FIRST)
            pushed_here = await one.worktrees.checkpoint(claimed, "pushed through the first server")
            await one.report(claimed, INTERRUPTED)
            await client.resume_task(task_id=task.id)

            two = await Daemon.start(there, "two", tmp_path / "machine-2")
            claimed = await two.claim(task.id)
            fetched_there = state(await two.worktrees.prepare(claimed))
            write(two.worktrees.path_of(task.id), SECOND)
            pushed_there = await two.worktrees.checkpoint(claimed, "pushed through the second server")
            await two.report(claimed, INTERRUPTED)
            await there.resume_task(task_id=task.id)

            three = await Daemon.start(client, "three", tmp_path / "machine-3")
            claimed = await three.claim(task.id)
            fetched_here = state(await three.worktrees.prepare(claimed))
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
    served = [json.loads(line) for line in (tmp_path / "second-server.log").read_text().splitlines() if line[:1] == "{"]
    calls = {(r["rpc_method"].rsplit("/", 1)[1], r["rpc_code"]) for r in served if r["msg"] == "rpc"}

    assert pushed_here is not None and pushed_there is not None
    assert fetched_there == holding(pushed_here.commit_sha, FIRST)
    assert pushed_there.parent_commit_sha == pushed_here.commit_sha
    assert fetched_here == holding(pushed_there.commit_sha, SECOND)
    assert {("FetchObjects", "OK"), ("PushCheckpoint", "OK")} <= calls  # the second process served them
