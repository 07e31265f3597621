"""The code side of a daemon (DESIGN.md section 5): the directory a claimed task runs in, and its checkpoints.

A daemon-held task's worktree is `root/<task id>` on the daemon's own machine, a
`makima.worktree.LocalWorktree`: the daemon snapshots and restores it with the service's own code,
so ignored files, symlinks, modes and file names that are not UTF-8 follow one set of rules. On
claim, `prepare` makes the directory hold exactly the commit the claim names, after fetching only
the objects the daemon lacks (FetchObjects, its branch head as the have). `checkpoint` commits the
directory on top of the task's head as the service knows it and uploads only what the service
lacks (PushCheckpoint): the service holds that head and all it reaches, which is the start commit
and every commit pushed since under the claim, so the head is the only have needed.

A service-held worktree (a daemon on the service's own machine) is used in place and checkpointed by
the service (TaskForkService.CreateCheckpoint). A task without a worktree gets a plain directory.

Git work runs in worker threads. Calls for one task take their turn (a checkpoint asked for while
another is being pushed goes on top of it); calls for different tasks run side by side.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from makima.client._async import AsyncClient
from makima.client._errors import InvalidArgumentError
from makima.v1 import daemon_pb2, resources_pb2
from makima.worktree import DEFAULT_CHUNK_SIZE, LocalWorktree, NotARepositoryError

SERVICE = resources_pb2.WORKTREE_PLACEMENT_SERVICE
DAEMON = resources_pb2.WORKTREE_PLACEMENT_DAEMON


@dataclass
class _Claim:
    """One claim of a daemon-held task, as this daemon last saw it on the service."""

    lease_token: str
    # The task's head_commit_sha on the records: the parent of the next checkpoint ("" for none).
    head: str


class DaemonWorktrees:
    """The worktrees of the tasks a daemon claims, under `root` on the daemon's machine.

    `prepare(claimed)` returns the directory to run the task in, holding the claim's start commit;
    `checkpoint(claimed, message)` records that directory as the task's next checkpoint and returns
    it. Failures: a MakimaError from the service (FailedPreconditionError LEASE_LOST: the task is not
    this daemon's any more; AbortedError CHECKPOINT_CONFLICT: the task's head moved on the records),
    a `makima.worktree.GitError` for a local directory that cannot serve (e.g. `root/<task id>`
    exists and is not a worktree, or a service-held worktree is not on this machine), or OSError.
    """

    def __init__(self, client: AsyncClient, root: str | os.PathLike[str]) -> None:
        self._client = client
        self.root = Path(root)
        # By task id; a claim with another lease token starts over from its own start commit.
        self._claims: dict[str, _Claim] = {}
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def path_of(self, task_id: str) -> Path:
        """The directory of a task run here: right under the root, named by the task's UUID (parsed,
        so that an id can never name another place)."""
        return self.root / str(uuid.UUID(task_id))

    async def prepare(self, claimed: daemon_pb2.ClaimedTask) -> Path:
        """The directory to run a claimed task in, holding exactly the commit the claim starts from.

        The worktree is made on first use and kept for later claims of the task. It is always
        materialized, even when its branch is already at the start commit: work left from an
        earlier run that was never checkpointed is not part of the task any more (ignored files stay).
        The branches CreateBranch recorded for the task are created too, unless they exist here.
        """
        task = claimed.task
        placement = claimed.worktree.placement
        if placement == SERVICE:
            path = Path(task.worktree_path)
            if not await asyncio.to_thread(path.is_dir):
                raise NotARepositoryError(
                    f"the worktree of task {task.id} is held by the service at {task.worktree_path!r}, which is "
                    "not on this machine: run a daemon on the service's machine for it",
                    path=task.worktree_path,
                )
            return path
        path = self.path_of(task.id)
        if placement != DAEMON:
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
            return path
        start = claimed.worktree.start_commit_sha
        async with self._turns[task.id]:
            worktree = await asyncio.to_thread(_open_or_init, path, claimed.worktree.branch)
            try:
                if start and not await asyncio.to_thread(worktree.has_object, start):
                    await self._fetch(worktree, start)
                await asyncio.to_thread(worktree.materialize, start)
                for branch in claimed.worktree.branches:
                    if not await asyncio.to_thread(worktree.has_object, branch.commit_sha):
                        await self._fetch(worktree, branch.commit_sha)
                    await asyncio.to_thread(worktree.add_branch, branch.name, branch.commit_sha)
            finally:
                worktree.close()
            self._claims[task.id] = _Claim(claimed.lease_token, head=start)
        return path

    async def checkpoint(self, claimed: daemon_pb2.ClaimedTask, message: str) -> resources_pb2.Checkpoint | None:
        """Record the task's worktree as a checkpoint with `message`; None for a task without a worktree.

        A daemon-held worktree is committed locally on the task's head, and the pack of what the
        service lacks is pushed with one request_id for every retry of the push. Should the service
        miss objects of the head it is assumed to hold (its garbage collection took them), the push is
        made once more with every object of the commit.
        """
        task = claimed.task
        placement = claimed.worktree.placement
        if placement == SERVICE:
            return (await self._client.create_checkpoint(task_id=task.id, message=message)).checkpoint
        if placement != DAEMON:
            return None
        async with self._turns[task.id]:
            claim = self._claims.get(task.id)
            if claim is None or claim.lease_token != claimed.lease_token:
                claim = self._claims[task.id] = _Claim(claimed.lease_token, head=claimed.worktree.start_commit_sha)
            pushed = await self._push(claim, claimed, message)
            claim.head = pushed.commit_sha
            return pushed

    async def _push(self, claim: _Claim, claimed: daemon_pb2.ClaimedTask, message: str) -> resources_pb2.Checkpoint:
        """Commit the worktree on `claim.head` and push the pack of what the service lacks."""
        path = self.path_of(claimed.task.id)
        with tempfile.TemporaryFile() as pack:
            commit = await asyncio.to_thread(_commit, path, message, claim.head, pack)
            header = daemon_pb2.PushCheckpointHeader(
                request_id=str(uuid.uuid4()),
                task_id=claimed.task.id,
                lease_token=claimed.lease_token,
                commit_sha=commit,
                parent_commit_sha=claim.head,
                message=message,
            )
            try:
                pushed = await self._client.push_checkpoint(header, pack=pack)
            except InvalidArgumentError as err:
                if (err.reason, err.metadata.get("problem")) != ("INVALID_PACK", "missing_object"):
                    raise
                await asyncio.to_thread(_pack_in, path, commit, [], pack)
                pushed = await self._client.push_checkpoint(header, pack=pack)
        return pushed.checkpoint

    async def _fetch(self, worktree: LocalWorktree, commit: str) -> None:
        """Bring the objects of `commit` the worktree lacks into its store, verified."""
        head = await asyncio.to_thread(lambda: worktree.head)
        haves = [head] if head else []
        with tempfile.TemporaryFile() as pack:
            async for part in self._client.fetch_objects(want_commit_sha=commit, have_commit_shas=haves):
                if part.WhichOneof("part") == "pack_chunk":
                    await asyncio.to_thread(pack.write, part.pack_chunk)
            await asyncio.to_thread(_apply, worktree, pack, commit)


def _open_or_init(path: Path, branch: str) -> LocalWorktree:
    """The worktree at `path`, made on `branch` the first time this daemon runs the task."""
    if os.path.lexists(path / ".git"):
        return LocalWorktree.open(path)
    return LocalWorktree.init(path, branch=branch)


def _apply(worktree: LocalWorktree, pack: BinaryIO, commit: str) -> None:
    pack.seek(0)
    worktree.apply_pack(iter(lambda: pack.read(DEFAULT_CHUNK_SIZE), b""), commit=commit)


def _commit(path: Path, message: str, parent: str, pack: BinaryIO) -> str:
    """Commit the worktree at `path` on `parent`; write into `pack` what a holder of `parent` lacks."""
    with LocalWorktree.open(path) as worktree:
        commit = worktree.checkpoint(message, parent=parent or None).id.decode("ascii")
        _write_pack(worktree, commit, [parent] if parent else [], pack)
    return commit


def _pack_in(path: Path, commit: str, known: list[str], pack: BinaryIO) -> None:
    with LocalWorktree.open(path) as worktree:
        _write_pack(worktree, commit, known, pack)


def _write_pack(worktree: LocalWorktree, commit: str, known: list[str], pack: BinaryIO) -> None:
    pack.seek(0)
    pack.truncate()
    for chunk in worktree.outgoing(commit, known=known).chunks:
        pack.write(chunk)
