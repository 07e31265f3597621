"""Errors that tell the truth: each failure of the issue answers with what it is, through the stubs.

Undecodable request bytes, file names that are not UTF-8, over-long names that would become paths, a
full or read-only workspace (a real tmpfs), and a database that refuses connections, is shutting down
or is gone (a real PostgreSQL). Each server-side failure is logged once with its cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from makima.server.api.errors import status_for
from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from makima.server.domain.errors import FailedPrecondition, Unavailable
from makima.server.domain.runtime import Principal, Tx
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.conftest import new_api, postgres_base_url
from tests.helpers import Api, create_contract, create_task, fails, free_port

EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)
GARBAGE = [
    pytest.param(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="truncated-length"),
    pytest.param(b"\x0a\x02\xff\xfe", id="string-not-utf8"),
    pytest.param(b"\xff", id="bad-tag"),
]


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- request bytes that are not a message ----------------------------------------------------------


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_undecodable_request_bytes_are_invalid_argument_without_a_traceback(
    api: Api, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    unary = api.channel.unary_unary("/makima.v1.SupervisorService/GetContract")
    failure = await fails(unary(garbage, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason="MALFORMED_REQUEST")
    assert failure.metadata == {"method": "/makima.v1.SupervisorService/GetContract"}

    server_stream = api.channel.unary_stream("/makima.v1.HistoryService/StreamTimeline")

    async def first() -> object:
        async for item in server_stream(garbage, metadata=api.md):
            return item
        return None

    await fails(first(), grpc.StatusCode.INVALID_ARGUMENT, reason="MALFORMED_REQUEST")
    assert _errors_logged(caplog) == []


async def test_an_undecodable_message_in_a_client_stream_ends_it_with_invalid_argument(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The call is refused whole: a call is one transaction, so the good message before it is not stored."""
    caplog.set_level(logging.DEBUG)
    task = await create_task(api)
    good = daemon_pb2.RecordTaskEventsRequest(
        task_id=task.id, events=[resources_pb2.NewTaskEvent(sequence=1, kind=resources_pb2.TASK_EVENT_KIND_OUTPUT)]
    ).SerializeToString()
    stream = api.channel.stream_unary("/makima.v1.DaemonService/RecordTaskEvents")

    async def messages() -> AsyncIterator[bytes]:
        yield good
        yield b"\x0a\x02\xff\xfe"

    await fails(stream(messages(), metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason="MALFORMED_REQUEST")
    assert _errors_logged(caplog) == []
    listed = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task.id), metadata=api.md)
    assert [e.sequence for e in listed.events] == []


# -- file names that are not UTF-8 ---------------------------------------------------------------------


async def _initial_checkpoint(api: Api, task_id: str) -> resources_pb2.Checkpoint:
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task_id), metadata=api.md)
    return listed.checkpoints[-1]


async def test_a_file_name_that_is_not_utf8_is_carried_exactly(api: Api) -> None:
    task = await create_task(api, worktree=EMPTY)
    root = os.fsencode(task.worktree_path)
    raw = b"caf\xe9-\xff.txt"
    with open(os.path.join(root, raw), "wb") as f:
        f.write(b"latin-1 name")
    Path(task.worktree_path, "naïve.txt").write_text("a UTF-8 name")
    initial = await _initial_checkpoint(api, task.id)
    expected = [
        task_fork_pb2.FileChange(
            path="caf\ufffd-\ufffd.txt", path_bytes=raw, change_type=task_fork_pb2.FILE_CHANGE_TYPE_ADDED
        ),
        task_fork_pb2.FileChange(path="naïve.txt", change_type=task_fork_pb2.FILE_CHANGE_TYPE_ADDED),
    ]

    live = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(task_id=task.id, base_checkpoint_id=initial.id), metadata=api.md
    )
    assert list(live.changes) == expected

    made = await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    between = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(
            task_id=task.id, base_checkpoint_id=initial.id, target_checkpoint_id=made.checkpoint.id
        ),
        metadata=api.md,
    )
    assert list(between.changes) == expected

    rewound = await api.tasks.RewindTask(
        task_fork_pb2.RewindTaskRequest(task_id=task.id, checkpoint_id=initial.id, mode=task_fork_pb2.REWIND_MODE_CODE),
        metadata=api.md,
    )
    assert rewound.code_rewound
    assert not os.path.exists(os.path.join(root, raw))
    back = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(
            task_id=task.id, base_checkpoint_id=initial.id, target_checkpoint_id=rewound.safety_checkpoint.id
        ),
        metadata=api.md,
    )
    assert list(back.changes) == expected


def test_an_error_naming_a_path_that_is_not_utf8_is_still_answered() -> None:
    path = os.fsdecode(b"/workspace/caf\xe9")  # as os.fsdecode hands it over: with a surrogate escape
    error = FailedPrecondition(f"cannot write {path}", reason="WORKSPACE_NOT_WRITABLE", metadata={"path": path})
    code, status = status_for(error, "/makima.v1.TaskForkService/CreateCheckpoint")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    details = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    assert details.message == "cannot write /workspace/caf\ufffd"
    info = error_details_pb2.ErrorInfo()
    details.details[0].Unpack(info)
    assert info.metadata["path"] == "/workspace/caf\ufffd"


# -- names that become paths ---------------------------------------------------------------------------


async def _task_with_checkpoint(api: Api) -> tuple[resources_pb2.Task, resources_pb2.Checkpoint]:
    task = await create_task(api, worktree=EMPTY)
    await api.daemon.AppendMessages(
        daemon_pb2.AppendMessagesRequest(
            task_id=task.id, messages=[resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER)]
        ),
        metadata=api.md,
    )
    return task, await _initial_checkpoint(api, task.id)


async def _timeline_length(api: Api) -> int:
    return len((await api.history.ListTimeline(history_pb2.ListTimelineRequest(), metadata=api.md)).events)


@pytest.mark.parametrize(
    ("branch_name", "reason"),
    [
        pytest.param("b" * 10_000, "LIMIT_EXCEEDED", id="10000-characters"),
        pytest.param("€" * 100, "INVALID_BRANCH_NAME", id="300-bytes-in-100-characters"),
    ],
)
async def test_an_over_long_branch_name_is_invalid_argument_and_writes_nothing(
    api: Api, branch_name: str, reason: str
) -> None:
    task, checkpoint = await _task_with_checkpoint(api)
    before = await _timeline_length(api)
    fork = task_fork_pb2.ForkTaskRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name=branch_name)
    failure = await fails(api.tasks.ForkTask(fork, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason=reason)
    assert failure.fields == ["branch_name"]
    branch = task_fork_pb2.CreateBranchRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name=branch_name)
    failure = await fails(
        api.tasks.CreateBranch(branch, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason=reason
    )
    assert failure.fields == ["branch_name"]
    assert await _timeline_length(api) == before


async def test_a_branch_name_of_250_bytes_works(api: Api) -> None:
    task, checkpoint = await _task_with_checkpoint(api)
    name = "x/" + "y" * 248
    made = await api.tasks.CreateBranch(
        task_fork_pb2.CreateBranchRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name=name),
        metadata=api.md,
    )
    assert made.ref == f"refs/heads/{name}"
    forked = await api.tasks.ForkTask(
        task_fork_pb2.ForkTaskRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name="z" * 250),
        metadata=api.md,
    )
    assert forked.task.branch == "z" * 250


async def test_a_repository_path_too_long_for_the_file_system_is_invalid_argument(api: Api) -> None:
    source = await create_task(api, worktree=EMPTY)
    for repository in ("r" * 300, f"{source.worktree_path}/{'d' * 256}", "/".join(["d" * 200] * 21)):
        spec = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=repository)
        failure = await fails(
            api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=spec), metadata=api.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert failure.fields == ["worktree.repository"]
        assert "bytes" in failure.message or "at most" in failure.message, failure.message  # an up-front limit
    spec = resources_pb2.WorktreeSpec(
        source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=source.worktree_path, ref="€" * 250
    )
    failure = await fails(
        api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=spec), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["worktree.ref"]


# -- a full or read-only workspace (a real tmpfs) --------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs root with CAP_SYS_ADMIN, as in CI here)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


@contextlib.asynccontextmanager
async def serving(database_url: str, workspace_root: Path) -> AsyncIterator[tuple[App, Api]]:
    app = await start(
        Settings(listen="127.0.0.1:0", database_url=database_url, workspace_root=workspace_root, shutdown_grace=1.0)
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, await new_api(app, channel)
    finally:
        await app.stop(1.0)


async def _checkpoint_count(api: Api, task_id: str) -> int:
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task_id), metadata=api.md)
    return len(listed.checkpoints)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:  # unbuffered: closing must not flush into a full disk
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def test_a_full_workspace_is_resource_exhausted_naming_it(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "ws", "4m") as root:
        async with serving(database_url, root) as (_, api):
            task = await create_task(api, worktree=EMPTY)
            Path(task.worktree_path, "data.bin").write_bytes(os.urandom(512 * 1024))
            filler = _fill(root)
            caplog.clear()
            request = task_fork_pb2.CreateCheckpointRequest(task_id=task.id)
            failure = await fails(
                api.tasks.CreateCheckpoint(request, metadata=api.md),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                reason="WORKSPACE_FULL",
            )
            assert failure.metadata["workspace_root"] == str(root.resolve())
            assert str(root.resolve()) in failure.message
            assert await _checkpoint_count(api, task.id) == 1  # nothing recorded
            logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert [(r.name, r.exc_info is not None) for r in logged] == [("makima.server.domain.workspace", True)]

            filler.unlink()
            await api.tasks.CreateCheckpoint(request, metadata=api.md)
            assert await _checkpoint_count(api, task.id) == 2


async def test_a_read_only_workspace_is_failed_precondition_naming_the_path(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Root ignores file modes, so the workspace is made read-only the way root cannot bypass: EROFS.
    (EACCES, for a server not running as root, takes the same path: it is mapped with EROFS.)"""
    with tmpfs(tmp_path / "ws", "4m") as root:
        async with serving(database_url, root) as (_, api):
            task = await create_task(api, worktree=EMPTY)
            before = await _timeline_length(api)
            remount(root, "ro")
            try:
                caplog.clear()
                failure = await fails(
                    api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    reason="WORKSPACE_NOT_WRITABLE",
                )
                assert failure.metadata["path"].startswith(task.worktree_path)
                assert failure.metadata["path"] in failure.message
                failure = await fails(
                    api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=EMPTY), metadata=api.md),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    reason="WORKSPACE_NOT_WRITABLE",
                )
                assert failure.metadata["path"].startswith(str(root.resolve()))
                assert await _timeline_length(api) == before  # no task, no checkpoint
                logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert [r.name for r in logged] == ["makima.server.domain.workspace"] * 2
                assert all(r.exc_info for r in logged)
            finally:
                remount(root, "rw")
            await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
            assert await _checkpoint_count(api, task.id) == 2


async def test_a_full_sqlite_database_is_resource_exhausted(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the database file is on the test's own tmpfs only with SQLite")
    with tmpfs(tmp_path / "db", "3m") as db_dir:
        async with serving(f"sqlite+aiosqlite:///{db_dir}/makima.db", tmp_path / "ws") as (_, api):
            await create_contract(api)
            _fill(db_dir)
            caplog.clear()
            codes = []
            for _ in range(50):
                try:
                    await create_contract(api, description="d" * 100_000)
                except aio.AioRpcError as exc:
                    codes.append(exc.code())
                    break
            assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED]
            await fails(create_contract(api), grpc.StatusCode.RESOURCE_EXHAUSTED, reason="DATABASE_FULL")
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- a database that cannot serve (a real PostgreSQL) ------------------------------------------------------


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _get(api: Api, contract_id: str, key: str | None = None) -> supervisor_pb2.GetContractResponse:
    metadata = (("authorization", f"Bearer {key or api.key}"),)
    return await api.supervisor.GetContract(
        supervisor_pb2.GetContractRequest(contract_id=contract_id), metadata=metadata
    )


@pytest.mark.postgresql_only
async def test_a_database_refusing_connections_is_unavailable_then_recovers(
    empty_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ALLOW_CONNECTIONS false and its sessions ended: reads, writes and key checks are UNAVAILABLE."""
    name = empty_database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(_dsn(postgres_base_url()))
    try:
        async with serving(empty_database_url, tmp_path / "ws") as (app, api):
            contract = await create_contract(api)
            spare = await create_api_key(app.runtime, owner_id=api.owner_id)  # never used: checked in the database
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            caplog.clear()
            await fails(_get(api, contract.id), grpc.StatusCode.UNAVAILABLE, reason="DATABASE_UNAVAILABLE")
            await fails(create_contract(api), grpc.StatusCode.UNAVAILABLE, reason="DATABASE_UNAVAILABLE")
            await fails(
                _get(api, contract.id, spare.secret), grpc.StatusCode.UNAVAILABLE, reason="DATABASE_UNAVAILABLE"
            )
            assert not [r for r in caplog.records if r.name == "makima.server.api.errors"]  # no INTERNAL

            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert (await _get(api, contract.id)).contract.id == contract.id
            assert (await _get(api, contract.id, spare.secret)).contract.id == contract.id
            await create_contract(api)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


class PrivateCluster:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl, run as the postgres user when root)."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl"):
            if shutil.which(tool) is None:
                message = f"{tool} is not installed"
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
        self.dir = Path(tempfile.mkdtemp(prefix="makima-pg-"))
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self, mode: str, *, wait: bool = True) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w" if wait else "-W", "stop")

    def running(self) -> bool:
        status = subprocess.run([*self._as, "pg_ctl", "-D", str(self.dir / "data"), "status"], capture_output=True)
        return status.returncode == 0

    def remove(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.postgresql_only
async def test_a_database_shutting_down_or_gone_is_unavailable_then_recovers(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """57P03 "the database system is shutting down" (CannotConnectNowError, a plain DBAPIError), then a
    refused TCP connection (a bare OSError from the driver): UNAVAILABLE both, and the same server
    answers again once PostgreSQL is back."""
    cluster = PrivateCluster()
    try:
        cluster.start()
        async with serving(cluster.url, tmp_path / "ws") as (_, api):
            contract = await create_contract(api)
            holder = await asyncpg.connect(_dsn(cluster.url))  # keeps a smart shutdown waiting
            cluster.stop("smart", wait=False)
            await holder.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            caplog.clear()
            await fails(_get(api, contract.id), grpc.StatusCode.UNAVAILABLE, reason="DATABASE_UNAVAILABLE")
            await fails(create_contract(api), grpc.StatusCode.UNAVAILABLE, reason="DATABASE_UNAVAILABLE")
            assert any("shutting down" in str(r.exc_info[1].__cause__ or "") for r in caplog.records if r.exc_info)

            await holder.close()
            for _ in range(100):
                if not cluster.running():
                    break
                await asyncio.sleep(0.1)
            assert not cluster.running()
            await fails(_get(api, contract.id), grpc.StatusCode.UNAVAILABLE, reason="DATABASE_UNAVAILABLE")
            await fails(create_contract(api), grpc.StatusCode.UNAVAILABLE, reason="DATABASE_UNAVAILABLE")
            assert not [r for r in caplog.records if r.name == "makima.server.api.errors"]  # no INTERNAL

            cluster.start()
            assert (await _get(api, contract.id)).contract.id == contract.id
            await create_contract(api)
    finally:
        cluster.remove()


# -- what is and is not the database's fault --------------------------------------------------------------


async def test_an_exhausted_connection_pool_is_unavailable(server: App, api: Api) -> None:
    async def body(tx: Tx) -> None:
        raise PoolTimeoutError("QueuePool limit of size 20 overflow 0 reached")

    with pytest.raises(Unavailable):
        await server.runtime.mutate(Principal(owner_id=api.owner_id, api_key_id=uuid.uuid4()), body)


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied", "/somewhere"),
        OSError(errno.ENAMETOOLONG, "File name too long"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused by something that is not the database"),
    ],
    ids=["EACCES", "ENAMETOOLONG", "ECONNREFUSED-not-from-the-driver"],
)
async def test_an_os_error_of_our_own_code_is_not_the_database_being_unavailable(
    server: App, api: Api, error: OSError
) -> None:
    async def body(tx: Tx) -> None:
        raise error

    with pytest.raises(type(error)):
        await server.runtime.mutate(Principal(owner_id=api.owner_id, api_key_id=uuid.uuid4()), body)
