"""`makima daemon run` end to end: the daemon is the installed command, run as a subprocess against the
real server; its commands are real shell commands, and what they did is read back through the API."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from makima.client import AsyncClient, DaemonConfig, TaskSetupError, UnavailableError
from makima.client.daemon import Daemon
from makima.server.app import App
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, task_fork_pb2
from tests.cli.conftest import MAKIMA
from tests.helpers import Api, create_contract, create_task
from tests.test_fencing import beating, own_server
from tests.test_work import claim, get_task, register

OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT
RUNNING = resources_pb2.TASK_STATUS_RUNNING
COMPLETED = resources_pb2.TASK_STATUS_COMPLETED
FAILED = resources_pb2.TASK_STATUS_FAILED
INTERRUPTED = resources_pb2.TASK_STATUS_INTERRUPTED
EMPTY_WORKTREE = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)
# How long a test waits for the daemon to do something before it fails.
PATIENCE = 30.0


@dataclass
class DaemonProcess:
    """A running `makima daemon run`, its stderr collected line by line."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode().rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def expect(self, text: str) -> None:
        """Wait until a line of the daemon's log contains `text`."""
        deadline = time.monotonic() + PATIENCE
        while not any(text in line for line in self.lines):
            assert self.process.returncode is None, f"the daemon exited:\n{self.log}"
            assert time.monotonic() < deadline, f"no {text!r} in the daemon's log:\n{self.log}"
            await asyncio.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self) -> int:
        try:
            code = await asyncio.wait_for(self.process.wait(), PATIENCE)
        except TimeoutError:
            raise AssertionError(f"the daemon did not exit:\n{self.log}") from None
        assert self._reader is not None
        await self._reader
        return code


Start = Callable[..., Awaitable[DaemonProcess]]


def environment(address: str, key: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAKIMA_")}
    return {**clean, "MAKIMA_ADDRESS": address, "MAKIMA_API_KEY": key, **extra}


@pytest.fixture
async def start_daemon(server: App, api: Api, tmp_path: Path) -> AsyncIterator[Start]:
    """Start `makima daemon run ARGS` as the test's owner (or on another server and owner with `on=`),
    with extra environment variables as keywords; every daemon still running at the end is killed."""
    started: list[DaemonProcess] = []

    async def start(*args: str, on: tuple[App, Api] | None = None, **extra_env: str) -> DaemonProcess:
        app, owner = on or (server, api)
        process = await asyncio.create_subprocess_exec(
            MAKIMA,
            "daemon",
            "run",
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=environment(f"127.0.0.1:{app.port}", owner.key, **extra_env),
            cwd=tmp_path,
        )
        daemon = DaemonProcess(process)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.signal(signal.SIGKILL)
            await daemon.process.wait()


async def until_status(api: Api, task_id: str, status: int) -> resources_pb2.Task:
    deadline = time.monotonic() + PATIENCE
    while (task := await get_task(api, task_id)).status != status:
        assert time.monotonic() < deadline, f"task {task_id} is {resources_pb2.TaskStatus.Name(task.status)}"
        await asyncio.sleep(0.05)
    return task


async def events_of(api: Api, task_id: str) -> list[resources_pb2.TaskEvent]:
    listed = await api.history.ListTaskEvents(
        history_pb2.ListTaskEventsRequest(task_id=task_id, page_size=1000), metadata=api.md
    )
    return list(listed.events)


async def until_events(api: Api, task_id: str, count: int) -> list[resources_pb2.TaskEvent]:
    deadline = time.monotonic() + PATIENCE
    while len(events := await events_of(api, task_id)) < count:
        assert time.monotonic() < deadline, f"only {len(events)} events of task {task_id}"
        await asyncio.sleep(0.05)
    return events


def texts(events: list[resources_pb2.TaskEvent]) -> list[tuple[int, str]]:
    return [(e.sequence, e.text) for e in events]


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def until_gone(pid: int) -> None:
    deadline = time.monotonic() + PATIENCE
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        await asyncio.sleep(0.05)


async def test_a_task_without_worktree_runs_in_its_directory_and_its_lines_become_events(
    api: Api, start_daemon: Start, tmp_path: Path
) -> None:
    contract = await create_contract(api, "site", initial_phase="plan")
    task = await create_task(api, "say hello", instructions="greet them", contract_id=contract.id)
    command = (
        "printf 'first\\n\\nsecond\\n'; echo 'to stderr' >&2; printf 'nul\\0 and \\377 byte\\n'; "
        'echo "$MAKIMA_TASK_ID|$MAKIMA_TASK_NAME|$MAKIMA_TASK_INSTRUCTIONS|$MAKIMA_CONTRACT_ID|$MAKIMA_PHASE"; '
        "pwd; printf 'no newline at the end'"
    )

    daemon = await start_daemon("--once", "--dir", "work", "--command", command)
    code = await daemon.exit_code()
    done = await get_task(api, task.id)
    events = await events_of(api, task.id)

    assert code == 0, daemon.log
    assert (done.status, done.status_message) == (COMPLETED, "")
    assert [e.sequence for e in events] == list(range(1, 9))
    assert {e.kind for e in events} == {OUTPUT}
    by_stream = {s: [e.text for e in events if e.data["stream"] == s] for s in ("stdout", "stderr")}
    assert by_stream == {
        "stdout": [
            "first",
            "",
            "second",
            "nul\ufffd and \ufffd byte",
            f"{task.id}|say hello|greet them|{contract.id}|plan",
            str((tmp_path / "work" / task.id).resolve()),
            "no newline at the end",
        ],
        "stderr": ["to stderr"],
    }
    assert f"claimed task {task.id} (say hello)" in daemon.log
    assert f"task {task.id} completed" in daemon.log


# Writes a line of 80,000 characters in two halves 0.2 s apart: the daemon has read the first half
# before the rest of the line and its end arrive together.
TWO_HALVES = """
import os, time
os.write(1, b"y" * 40000)
time.sleep(0.2)
os.write(1, b"y" * 40000 + b"\\n")
"""


async def test_a_flood_of_output_is_recorded_in_order_in_batches(
    server: App, api: Api, start_daemon: Start, tmp_path: Path
) -> None:
    """5,000 lines at once go out in batches of at most 100 lines; a line longer than 64 Ki characters
    is recorded in pieces, however it arrives. (And --quiet prints nothing.)"""
    task = await create_task(api, "chatty")
    (tmp_path / "halves.py").write_text(TWO_HALVES)
    command = f"seq 1 5000; head -c 150000 /dev/zero | tr '\\0' x; echo; {sys.executable} {tmp_path / 'halves.py'}"

    daemon = await start_daemon("--once", "--quiet", "--dir", "work", "--command", command)
    code = await daemon.exit_code()
    async with AsyncClient(f"127.0.0.1:{server.port}", api.key) as client:
        events = [e async for e in client.list_task_events.items(task_id=task.id, page_size=1000)]
        batches = [
            e.data
            async for e in client.list_timeline.items(
                task_id=task.id, kinds=[resources_pb2.TIMELINE_EVENT_KIND_TASK_EVENTS_RECORDED]
            )
        ]

    assert (code, daemon.log) == (0, "")  # --quiet
    numbers = [str(n) for n in range(1, 5001)]
    assert [e.text for e in events] == [*numbers, "x" * 65536, "x" * 65536, "x" * 18928, "y" * 65536, "y" * 14464]
    assert [e.sequence for e in events] == list(range(1, 5006))
    assert max(batch["count"] for batch in batches) <= 100
    assert len(batches) <= 5005 // 20  # batched, not one call per line


async def test_a_failing_command_fails_the_task_naming_its_exit_code(api: Api, start_daemon: Start) -> None:
    task = await create_task(api, "doomed")

    daemon = await start_daemon("--once", "--dir", "work", "--command", "echo trying; exit 3")
    code = await daemon.exit_code()
    failed = await get_task(api, task.id)

    assert code == 0, daemon.log
    assert (failed.status, failed.status_message) == (FAILED, "command exited with code 3")
    assert texts(await events_of(api, task.id)) == [(1, "trying")]
    assert f"task {task.id} failed: command exited with code 3" in daemon.log


async def test_a_service_held_worktree_task_runs_in_that_worktree_and_is_checkpointed(
    api: Api, start_daemon: Start, tmp_path: Path
) -> None:
    task = await create_task(api, "edit", worktree=EMPTY_WORKTREE)
    worktree = Path(task.worktree_path)

    daemon = await start_daemon("--once", "--dir", "work", "--command", "pwd > where.txt; echo made > by-agent.txt")
    code = await daemon.exit_code()
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task.id), metadata=api.md)
    done = await get_task(api, task.id)

    assert code == 0, daemon.log
    assert done.status == COMPLETED
    assert (worktree / "by-agent.txt").read_text() == "made\n"
    assert (worktree / "where.txt").read_text().strip() == str(worktree.resolve())
    assert not (tmp_path / "work" / task.id).exists()
    checkpoint = listed.checkpoints[0]  # the newest; the first one is the task's initial state
    assert len(listed.checkpoints) == 2
    assert checkpoint.message == "command exited with code 0"
    files = subprocess.run(
        ["git", "-C", str(worktree), "ls-tree", "--name-only", checkpoint.commit_sha],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert files == ["by-agent.txt", "where.txt"]


async def test_running_tasks_are_checkpointed_at_the_interval(api: Api, start_daemon: Start) -> None:
    task = await create_task(api, "long edit", worktree=EMPTY_WORKTREE)

    daemon = await start_daemon(
        "--once",
        "--dir",
        "work",
        "--checkpoint-interval",
        "0.4",
        "--command",
        "for i in 1 2 3 4 5 6; do echo $i > n.txt; sleep 0.2; done",
    )
    code = await daemon.exit_code()
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task.id), metadata=api.md)

    assert code == 0, daemon.log
    messages = [c.message for c in reversed(listed.checkpoints[:-1])]  # oldest first, after the initial one
    assert messages[-1] == "command exited with code 0"
    assert len(messages) >= 3 and set(messages[:-1]) == {"periodic checkpoint"}, messages


async def test_sigusr1_checkpoints_a_daemon_held_task_on_request(api: Api, start_daemon: Start) -> None:
    spec = resources_pb2.WorktreeSpec(
        source=resources_pb2.WorktreeSpec.SOURCE_EMPTY, placement=resources_pb2.WORKTREE_PLACEMENT_DAEMON
    )
    task = await create_task(api, "asked for a checkpoint", worktree=spec)

    daemon = await start_daemon("--once", "--dir", "work", "--command", "echo v1 > f.txt; echo ready; sleep 3")
    await until_events(api, task.id, 1)
    daemon.signal(signal.SIGUSR1)
    await daemon.expect("checkpointing the running tasks on SIGUSR1")
    code = await daemon.exit_code()
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task.id), metadata=api.md)

    assert code == 0, daemon.log
    messages = [c.message for c in reversed(listed.checkpoints)]  # oldest first
    assert messages[1:] == ["requested checkpoint", "command exited with code 0"], messages
    assert listed.checkpoints[1].kind == resources_pb2.CHECKPOINT_KIND_DAEMON  # pushed by the daemon


async def test_two_daemons_run_each_of_three_tasks_once(api: Api, start_daemon: Start, tmp_path: Path) -> None:
    ran = tmp_path / "ran.log"
    command = 'echo "$MAKIMA_TASK_ID" >> "$RAN"; sleep 1; echo done'
    daemons = [
        await start_daemon("--dir", f"work-{n}", "--name", f"d{n}", "--command", command, RAN=str(ran))
        for n in range(2)
    ]
    for daemon in daemons:
        await daemon.expect("waiting for tasks")

    tasks = [await create_task(api, f"t{n}") for n in range(3)]
    done = [await until_status(api, task.id, COMPLETED) for task in tasks]
    for daemon in daemons:
        daemon.signal(signal.SIGTERM)
    codes = [await daemon.exit_code() for daemon in daemons]

    assert codes == [143, 143], [d.log for d in daemons]
    assert sorted(ran.read_text().split()) == sorted(task.id for task in tasks)
    for task in tasks:
        assert texts(await events_of(api, task.id)) == [(1, "done")]
    assert len({task.daemon_id for task in done}) == 2  # the second daemon took a task while the first was busy


async def test_sigterm_interrupts_the_running_task_and_ends_its_command(
    api: Api, start_daemon: Start, tmp_path: Path
) -> None:
    task = await create_task(api, "endless")
    command = "sleep 60 & echo $! > child.pid; echo $$ > shell.pid; echo started; wait"

    daemon = await start_daemon("--dir", "work", "--command", command)
    await until_events(api, task.id, 1)
    workdir = tmp_path / "work" / task.id
    pids = [int((workdir / name).read_text()) for name in ("shell.pid", "child.pid")]
    daemon.signal(signal.SIGTERM)
    code = await daemon.exit_code()
    interrupted = await get_task(api, task.id)

    assert code == 143, daemon.log
    assert (interrupted.status, interrupted.status_message) == (INTERRUPTED, "the daemon got SIGTERM")
    assert not any(alive(pid) for pid in pids)
    assert texts(await events_of(api, task.id)) == [(1, "started")]
    assert f"task {task.id} interrupted: the daemon got SIGTERM" in daemon.log


async def test_processes_a_command_leaves_behind_end_with_it(api: Api, start_daemon: Start, tmp_path: Path) -> None:
    """A background process keeps the command's output open: the daemon ends it when the command exits
    instead of waiting for the output to close (it would wait 5 s, then stop reading)."""
    task = await create_task(api, "leaves a process")

    daemon = await start_daemon("--once", "--dir", "work", "--command", "sleep 30 & echo $! > bg.pid; echo done")
    code = await daemon.exit_code()
    changes = await api.history.ListTimeline(
        history_pb2.ListTimelineRequest(task_id=task.id, kinds=[resources_pb2.TIMELINE_EVENT_KIND_TASK_STATUS_CHANGED]),
        metadata=api.md,
    )
    at = {e.data["to"]: e.create_time.ToDatetime() for e in changes.events}

    assert code == 0, daemon.log
    assert (await get_task(api, task.id)).status == COMPLETED
    assert (at["completed"] - at["running"]).total_seconds() < 3
    assert not alive(int((tmp_path / "work" / task.id / "bg.pid").read_text()))


async def test_a_resumed_task_continues_its_event_sequence(api: Api, start_daemon: Start) -> None:
    task = await create_task(api, "two sittings")
    first = await start_daemon("--once", "--dir", "a", "--command", "echo one; echo two; exec sleep 60")
    await until_events(api, task.id, 2)
    first.signal(signal.SIGINT)  # Ctrl-C
    assert await first.exit_code() == 130, first.log
    assert (await until_status(api, task.id, INTERRUPTED)).status_message == "the daemon got SIGINT"
    await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=task.id), metadata=api.md)

    second = await start_daemon("--once", "--dir", "b", "--command", "echo three")
    code = await second.exit_code()

    assert code == 0, second.log
    assert (await get_task(api, task.id)).status == COMPLETED
    assert texts(await events_of(api, task.id)) == [(1, "one"), (2, "two"), (3, "three")]


async def test_a_daemon_whose_lease_is_taken_over_kills_its_command_and_stops_writing(
    empty_database_url: str, tmp_path: Path, start_daemon: Start
) -> None:
    """Daemon A is frozen (SIGSTOP) past its one-second lease; the task is interrupted, resumed and
    claimed by daemon B. Thawed, A learns it lost the task: it kills its command and reports nothing."""
    (tmp_path / "server").mkdir()
    async with own_server(empty_database_url, tmp_path / "server", lease_seconds=1, sweep_seconds=0.2) as (app, api):
        task = await create_task(api, "contested")
        command = 'echo $$ > shell.pid; i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.1; done'
        a = await start_daemon("--once", "--dir", "a", "--command", command, on=(app, api))
        await until_events(api, task.id, 3)
        shell = int((tmp_path / "a" / task.id / "shell.pid").read_text())

        a.signal(signal.SIGSTOP)
        await until_status(api, task.id, INTERRUPTED)
        await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=task.id), metadata=api.md)
        b = (await register(api, "b")).daemon.id
        taken = (await claim(api, b, wait=5)).claimed
        async with beating(api, b, task.id):
            await api.daemon.RecordTaskEvents(
                iter(
                    [
                        daemon_pb2.RecordTaskEventsRequest(
                            task_id=task.id,
                            lease_token=taken.lease_token,
                            events=[
                                resources_pb2.NewTaskEvent(
                                    sequence=taken.last_event_sequence + 1, kind=OUTPUT, text="from b"
                                )
                            ],
                        )
                    ]
                ),
                metadata=api.md,
            )
            a.signal(signal.SIGCONT)
            code = await a.exit_code()
            await until_gone(shell)
            held = await get_task(api, task.id)
            events = await events_of(api, task.id)

    assert code == 0, a.log
    assert f"task {task.id} lost its lease" in a.log
    assert (held.status, held.daemon_id) == (RUNNING, b)  # A reported nothing
    assert [e.text for e in events if e.sequence > taken.last_event_sequence] == ["from b"]


async def test_a_daemon_with_a_bad_key_exits_with_one_error_line(server: App, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        MAKIMA,
        "daemon",
        "run",
        "--dir",
        str(tmp_path),
        "--command",
        "true",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(f"127.0.0.1:{server.port}", "mk_not_a_key"),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 64 + 16  # UNAUTHENTICATED
    assert out == b""
    assert err.decode().startswith("error: UNAUTHENTICATED") and err.decode().count("\n") == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--command", " "), "makima daemon run: error: command must not be empty"),
        (("--command", "true", "--name", ""), "makima daemon run: error: name must not be empty"),
        (("--command", "true", "--max-tasks", "0"), "--max-tasks: must be between 1 and 1000: '0'"),
        (("--command", "true", "--checkpoint-interval", "-1"), "--checkpoint-interval: must be positive: '-1'"),
    ],
)
async def test_bad_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...], error: str) -> None:
    """Refused before any call: no server is needed."""
    process = await asyncio.create_subprocess_exec(
        MAKIMA,
        "daemon",
        "run",
        "--dir",
        str(tmp_path),
        *args,
        stderr=subprocess.PIPE,
        env=environment("127.0.0.1:1", "mk_unused"),
    )
    _, err = await asyncio.wait_for(process.communicate(), PATIENCE)

    assert process.returncode == 2
    assert error in err.decode()


class Scratch:
    """A worktree provider of the test's own: every task in `root/<name>`, checkpoints remembered; it
    cannot prepare the task "elsewhere" nor checkpoint the task "unsaved"."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints: list[tuple[str, str]] = []

    async def prepare(self, claimed: daemon_pb2.ClaimedTask) -> Path:
        if claimed.task.name == "elsewhere":
            raise TaskSetupError("its worktree is on another machine")
        path = self.root / claimed.task.name
        path.mkdir(parents=True)
        return path

    async def checkpoint(self, claimed: daemon_pb2.ClaimedTask, message: str) -> None:
        if claimed.task.name == "unsaved":
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "the object store is down")
        self.checkpoints.append((claimed.task.name, message))


async def test_an_embedded_daemon_runs_tasks_where_its_worktree_provider_says(
    server: App, api: Api, tmp_path: Path
) -> None:
    """The seam for daemon-held worktrees: the loop asks its provider for the directory and for the
    checkpoint; a task it cannot prepare, or whose work it cannot checkpoint, fails saying why."""
    here, elsewhere, unsaved = [await create_task(api, name) for name in ("here", "elsewhere", "unsaved")]
    provider = Scratch(tmp_path / "trees")
    lines: list[str] = []
    config = DaemonConfig(command="echo made > file; echo ok", directory=tmp_path / "unused", once=True)

    async with AsyncClient(f"127.0.0.1:{server.port}", api.key) as client:
        for _ in range(3):
            await Daemon(client, config, worktrees=provider, log=lines.append).run()
    ran, failed, lost = [await get_task(api, task.id) for task in (here, elsewhere, unsaved)]

    assert (tmp_path / "trees" / "here" / "file").read_text() == "made\n"
    assert provider.checkpoints == [("here", "command exited with code 0")]
    assert ran.status == COMPLETED
    assert (failed.status, failed.status_message) == (
        FAILED,
        "could not prepare the task's directory: its worktree is on another machine",
    )
    assert (lost.status, lost.status_message) == (
        FAILED,
        "command exited with code 0, but the checkpoint failed: UNAVAILABLE UNAVAILABLE: the object store is down",
    )
    assert not (tmp_path / "unused").exists()
    assert texts(await events_of(api, here.id)) == [(1, "ok")]
    assert any(f"claimed task {elsewhere.id} (elsewhere)" in line for line in lines)
