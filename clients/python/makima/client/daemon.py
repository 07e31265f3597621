"""A daemon's work loop: claim tasks, run a command for each one, stream its output, report how it ended.

`Daemon` is what `makima daemon run` runs, and what another program embeds to run makima tasks. It
registers, then claims tasks with a long-poll; for each task it asks a `WorktreeProvider` for the
directory to work in, runs the command through the shell there, records every line the command
prints as a TASK_EVENT_KIND_OUTPUT event, keeps the task's lease with heartbeats, checkpoints when the
command exits and reports COMPLETED or FAILED.

Leases: every write of a task carries its claim's `lease_token`. When a heartbeat lists the task in
`lost_task_ids`, or a write answers FAILED_PRECONDITION LEASE_LOST, the task is somebody else's now:
its command is killed at once (another daemon may already be working on it) and nothing more is
written or reported for it.

Output events: sequences continue after `ClaimedTask.last_event_sequence`, each batch keeps its
events (and their `event_time`) once made, so a resend after a lost answer is acknowledged by the
service as a duplicate and never stored twice.

Stopping (`stop()`): no more claims; running commands get SIGTERM, then SIGKILL after `kill_grace`;
their output is recorded and the tasks are reported INTERRUPTED (resumable), without a checkpoint:
a task resumes from its last checkpoint. A claim that the service grants while the daemon stops is
abandoned, and that task becomes INTERRUPTED when its lease runs out.

Commands run in a session of their own, so that every process they start can be signalled as one
group, and processes a command leaves behind when it exits are killed with it. POSIX only.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeAlias, TypeVar

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from makima.client._async import AsyncClient
from makima.client._errors import DeadlineExceededError, FailedPreconditionError, MakimaError, UnavailableError
from makima.client._options import RetryPolicy
from makima.client.worktrees import DaemonWorktrees
from makima.v1 import daemon_pb2, resources_pb2
from makima.worktree import GitError

logger = logging.getLogger(__name__)
T = TypeVar("T")
Status: TypeAlias = resources_pb2.TaskStatus.ValueType

COMPLETED = resources_pb2.TASK_STATUS_COMPLETED
FAILED = resources_pb2.TASK_STATUS_FAILED
INTERRUPTED = resources_pb2.TASK_STATUS_INTERRUPTED
OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT

# The service ends a long-poll before the call's deadline; the deadline leaves it this much room.
CLAIM_DEADLINE_MARGIN = 5.0
# What a line of output may hold: a longer one is recorded in pieces of this many characters.
MAX_LINE_CHARS = 64 * 1024
# A batch stays well under gRPC's 4 MiB message limit even when every character takes 4 bytes.
MAX_BATCH_CHARS = 512 * 1024
# Output read but not yet recorded; past it the command's pipes are no longer read, so a command
# that writes faster than the service records waits instead of filling the daemon's memory.
MAX_PENDING_CHARS = 4 * 1024 * 1024
_READ_SIZE = 64 * 1024
# ReportTaskStatusRequest.message's limit.
MAX_STATUS_MESSAGE_CHARS = 10_000
# After the command exits, how long its output pipes may stay open (a process that left its group).
_DRAIN_SECONDS = 5.0
# While the daemon stops, how long output may still wait for a service that cannot be reached.
_FLUSH_ON_STOP_SECONDS = 10.0
# Failed sends of output are retried for as long as the task is held; these spread the attempts.
_OUTPUT_RETRY = RetryPolicy(max_attempts=None, max_backoff=5.0)
_CLAIM_RETRY = RetryPolicy(max_attempts=None, max_backoff=10.0)
# With `until_idle`, how long a claim waits for a task before the daemon counts the service idle.
_IDLE_CLAIM_WAIT = 1.0


class TaskSetupError(Exception):
    """A claimed task cannot run on this daemon (e.g. its worktree is on another machine); the task is
    reported FAILED with this message."""


class WorktreeProvider(Protocol):
    """Where a claimed task's command runs, and how its work is checkpointed.

    The seam of worktree placement, served by `DaemonWorktrees` (makima.client.worktrees): a
    daemon-held worktree materialized from the commit the claim names and checkpointed by upload, a
    service-held one in place (same machine), a plain directory for a task without one. Either method
    may raise TaskSetupError, a `makima.worktree.GitError` or OSError (the task is reported FAILED),
    or a MakimaError, of which FAILED_PRECONDITION LEASE_LOST drops the task.
    """

    async def prepare(self, claimed: daemon_pb2.ClaimedTask) -> Path:
        """The directory to run the task's command in, ready to use."""
        ...

    async def checkpoint(self, claimed: daemon_pb2.ClaimedTask, message: str) -> resources_pb2.Checkpoint | None:
        """Record the task's worktree as a checkpoint; None for a task without a worktree."""
        ...


@dataclass(frozen=True)
class DaemonConfig:
    """What a daemon runs and how.

    `command` runs through the shell with the task in its environment (MAKIMA_TASK_ID,
    MAKIMA_TASK_NAME, MAKIMA_TASK_INSTRUCTIONS, MAKIMA_CONTRACT_ID, MAKIMA_PHASE); `directory` holds
    the directories of tasks that have no worktree of their own. `kinds` limits the tasks claimed
    (empty: all); `max_tasks` is how many run at once; `once` stops after one task; `until_idle`
    stops when no task is pending and none runs (for scripts). With `checkpoint_interval`, running
    tasks are also checkpointed every that many seconds.
    """

    command: str
    directory: Path
    name: str = field(default_factory=socket.gethostname)
    kinds: tuple[resources_pb2.TaskKind.ValueType, ...] = ()
    once: bool = False
    until_idle: bool = False
    max_tasks: int = 1
    checkpoint_interval: float | None = None
    # How long one ClaimTask call waits for a task (the service shortens it to at most 60 s).
    claim_wait: float = 20.0
    # Output is sent when a batch has this many lines or its first line is this old.
    batch_lines: int = 100
    batch_seconds: float = 0.2
    # Seconds between SIGTERM and SIGKILL when a command is stopped.
    kill_grace: float = 5.0

    def __post_init__(self) -> None:
        if not self.command.strip():
            raise ValueError("command must not be empty")
        if not self.name.strip():
            raise ValueError("name must not be empty")
        if not 1 <= self.max_tasks <= 1000:  # a heartbeat names at most 1000 tasks
            raise ValueError("max_tasks must be between 1 and 1000")
        if self.checkpoint_interval is not None and self.checkpoint_interval <= 0:
            raise ValueError("checkpoint_interval must be positive")
        if self.claim_wait < 0 or self.batch_seconds < 0 or self.kill_grace < 0 or self.batch_lines < 1:
            raise ValueError("claim_wait, batch_seconds and kill_grace must be >= 0, batch_lines >= 1")


def is_lease_lost(err: BaseException) -> bool:
    """Whether a failed write says the task is not this daemon's any more."""
    return isinstance(err, FailedPreconditionError) and err.reason == "LEASE_LOST"


class _LeaseLost(Exception):
    """The task was taken from this daemon: stop working on it and report nothing."""


class Daemon:
    """The work loop of one daemon over `client`; `run()` until `stop()` (or one task with `once`).

    `worktrees` defaults to DaemonWorktrees under `config.directory`; `log` receives one line per
    step (claimed, completed, failed, interrupted, lost, retries).
    """

    def __init__(
        self,
        client: AsyncClient,
        config: DaemonConfig,
        *,
        worktrees: WorktreeProvider | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._config = config
        self._worktrees = worktrees or DaemonWorktrees(client, config.directory)
        self._log = log or (lambda _line: None)
        self._stopping = asyncio.Event()
        self._stop_reason = ""
        self._runs: dict[str, _TaskRun] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self.daemon_id = ""

    def stop(self, reason: str = "the daemon stopped") -> None:
        """Stop claiming and interrupt the running tasks; `run()` returns once they are reported."""
        if not self._stopping.is_set():
            self._stop_reason = reason
            self._stopping.set()

    async def run(self) -> None:
        """Register, then claim and run tasks until stopped. A failure that retrying cannot cure (e.g.
        UNAUTHENTICATED) interrupts the running tasks and is raised as a MakimaError."""
        registered = await self._client.register_daemon(name=self._config.name, hostname=socket.gethostname())
        self.daemon_id = registered.daemon.id
        lease = registered.lease_duration.ToTimedelta().total_seconds()
        self._log(f"daemon {self.daemon_id} registered as {_one_line(self._config.name)}; waiting for tasks")
        heartbeats = asyncio.create_task(self._heartbeats(lease))
        try:
            await self._claim_tasks()
            await asyncio.gather(*self._workers)
        except BaseException:
            self.stop(self._stop_reason or "the daemon failed")
            await asyncio.gather(*self._workers, return_exceptions=True)
            raise
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats

    async def _claim_tasks(self) -> None:
        slots = asyncio.Semaphore(self._config.max_tasks)
        wait = duration_pb2.Duration()
        # Until idle, a claim waits only briefly: no answer then means nothing is pending.
        claim_wait = self._config.claim_wait
        if self._config.until_idle:
            claim_wait = min(claim_wait, _IDLE_CLAIM_WAIT)
        wait.FromNanoseconds(int(claim_wait * 1e9))
        failures = 0
        while not self._stopping.is_set():
            if await self._unless_stopped(slots.acquire()) is None:
                return
            try:
                response = await self._unless_stopped(
                    self._client.claim_task(
                        daemon_id=self.daemon_id,
                        kinds=self._config.kinds,
                        wait=wait,
                        timeout=claim_wait + CLAIM_DEADLINE_MARGIN,
                    )
                )
            except (UnavailableError, DeadlineExceededError) as err:
                slots.release()
                failures += 1
                delay = _CLAIM_RETRY.backoff(failures) or 0.0
                self._log(f"claim failed ({err}); retrying in {delay:.1f} s")
                await self._unless_stopped(asyncio.sleep(delay))
                continue
            except BaseException:
                slots.release()
                raise
            failures = 0
            if response is None or not response.HasField("claimed"):
                slots.release()
                if self._config.until_idle and not self._workers:
                    return
                continue
            worker = asyncio.create_task(self._work(response.claimed))
            self._workers.add(worker)

            def finished(done: asyncio.Task[None]) -> None:
                self._workers.discard(done)
                slots.release()

            worker.add_done_callback(finished)
            if self._config.once:
                return

    async def _unless_stopped(self, awaitable: Awaitable[T]) -> T | None:
        """The result of `awaitable`, or None (and the awaitable cancelled) once the daemon stops."""
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None

    async def _heartbeats(self, lease: float) -> None:
        """Renew the leases of the running tasks three times per lease; stop the tasks it says are lost."""
        while True:
            await asyncio.sleep(lease / 3)
            held = [task_id for task_id, run in self._runs.items() if not run.lost.is_set()]
            try:
                # An answer after the lease's end is of no use: the lease is the call's deadline.
                beat = await self._client.heartbeat(daemon_id=self.daemon_id, task_ids=held, timeout=lease)
            except MakimaError as err:
                self._log(f"heartbeat failed: {err}")
                continue
            for task_id in beat.lost_task_ids:
                if (run := self._runs.get(task_id)) is not None:
                    run.lost.set()

    async def _work(self, claimed: daemon_pb2.ClaimedTask) -> None:
        """Run one claimed task to its end and report it, unless its lease is lost on the way."""
        task = claimed.task
        self._log(f"claimed task {task.id} ({_one_line(task.name)})")
        run = _TaskRun(claimed)
        self._runs[task.id] = run
        try:
            try:
                status, message = await self._execute(run)
            except _LeaseLost:
                self._log(f"task {task.id} lost its lease: command stopped, nothing reported")
                return
            except Exception as err:  # a fault of the daemon: the task fails, the other tasks go on
                logger.exception("task %s: unexpected daemon error", task.id)
                status, message = FAILED, f"the daemon failed: {type(err).__name__}: {err}"
            await self._report(claimed, status, message)
        finally:
            del self._runs[task.id]

    async def _report(self, claimed: daemon_pb2.ClaimedTask, status: Status, message: str) -> None:
        task_id = claimed.task.id
        try:
            await self._client.report_task_status(
                daemon_id=self.daemon_id,
                task_id=task_id,
                status=status,
                message=message[:MAX_STATUS_MESSAGE_CHARS],
                lease_token=claimed.lease_token,
            )
        except MakimaError as err:
            if is_lease_lost(err):
                self._log(f"task {task_id} lost its lease: nothing reported")
            else:
                self._log(f"task {task_id} could not be reported ({err}); it is interrupted when its lease ends")
            return
        ending = resources_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_").lower()
        self._log(f"task {task_id} {ending}" + (f": {message}" if message else ""))

    async def _execute(self, run: _TaskRun) -> tuple[Status, str]:
        """Prepare the directory, run the command, record its output and checkpoint: the status to
        report and its message. Raises _LeaseLost when the task was taken away meanwhile."""
        claimed = run.claimed
        try:
            directory = await self._worktrees.prepare(claimed)
        except (TaskSetupError, GitError, OSError) as err:
            return FAILED, f"could not prepare the task's directory: {err}"
        except MakimaError as err:
            if is_lease_lost(err):
                raise _LeaseLost from err
            return FAILED, f"could not prepare the task's directory: {err}"
        if self._stopping.is_set():
            return INTERRUPTED, f"{self._stop_reason} before the command started"
        try:
            loop = asyncio.get_running_loop()
            transport, command = await loop.subprocess_shell(
                lambda: _Command(loop),
                self._config.command,
                cwd=directory,
                env=_environment(claimed),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            return FAILED, f"could not start the command: {err}"
        assert command.stdout is not None and command.stderr is not None
        pid = transport.get_pid()
        recorder = _OutputRecorder(self._client, claimed, self._config, self._log)
        readers = [
            asyncio.create_task(recorder.read(command.stdout, "stdout")),
            asyncio.create_task(recorder.read(command.stderr, "stderr")),
        ]
        sender = asyncio.create_task(recorder.send())
        checkpoints = asyncio.create_task(self._checkpoint_periodically(run))
        exited = asyncio.create_task(command.exited.wait())
        stopped = asyncio.create_task(self._stopping.wait())
        lost = asyncio.create_task(run.lost.wait())
        try:
            # The sender and the checkpoints end early only on a failure.
            await asyncio.wait({exited, stopped, lost, sender, checkpoints}, return_when=asyncio.FIRST_COMPLETED)
            for failed in (sender, checkpoints):
                if failed.done():
                    failed.result()  # raises what made it end
            if run.lost.is_set():
                raise _LeaseLost  # the command is killed on the way out
            interrupted = not exited.done()
            if interrupted:
                await _terminate(pid, command, self._config.kill_grace)
            # What the command left running would keep its pipes open: it ends with the command.
            _signal_group(pid, signal.SIGKILL)
            await _drain(readers)
            run.done.set()
            await checkpoints
            await self._flush(run, recorder, sender, stopped=stopped, lost=lost)
            if interrupted:
                return INTERRUPTED, self._stop_reason
            code = transport.get_returncode()
            assert code is not None
            ending = f"command exited with code {code}" if code >= 0 else f"command killed by {_signal_name(-code)}"
        except MakimaError as err:
            if is_lease_lost(err):
                raise _LeaseLost from err
            return FAILED, f"the daemon could not record the task's output: {err}"
        finally:
            # Whatever ended the run (a lost lease at once), no process of the command outlives it.
            _signal_group(pid, signal.SIGKILL)
            for pending in (*readers, sender, checkpoints, stopped, lost):
                pending.cancel()
            await asyncio.gather(*readers, sender, checkpoints, stopped, lost, return_exceptions=True)
            await command.exited.wait()
            transport.close()  # its pipes too, even if a process that left the group holds them
        try:
            await self._worktrees.checkpoint(claimed, ending)
        except (MakimaError, TaskSetupError, GitError, OSError) as err:
            if is_lease_lost(err):
                raise _LeaseLost from err
            return FAILED, f"{ending}, but the checkpoint failed: {err}"
        return (COMPLETED, "") if code == 0 else (FAILED, ending)

    async def _flush(
        self,
        run: _TaskRun,
        recorder: _OutputRecorder,
        sender: asyncio.Task[None],
        *,
        stopped: asyncio.Task[bool],
        lost: asyncio.Task[bool],
    ) -> None:
        """Wait until the whole output is recorded, or the lease is lost (_LeaseLost). While the daemon
        stops, a service that cannot be reached gets `_FLUSH_ON_STOP_SECONDS` more, then the rest of the
        output is given up (and logged) so that stopping never hangs."""
        recorder.end()
        await asyncio.wait({sender, lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not sender.done() and not run.lost.is_set():
            await asyncio.wait({sender, lost}, timeout=_FLUSH_ON_STOP_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if run.lost.is_set():
            raise _LeaseLost
        if not sender.done():
            self._log(f"task {run.claimed.task.id}: {recorder.unsent} output lines could not be recorded")
            return
        sender.result()

    def request_checkpoints(self) -> None:
        """Checkpoint every running task now (what `makima daemon run` does on SIGUSR1)."""
        for run in self._runs.values():
            run.checkpoint_wanted.set()

    async def _checkpoint_periodically(self, run: _TaskRun) -> None:
        """Checkpoint every `checkpoint_interval` seconds, and whenever one is requested, until the
        command is done. A checkpoint in progress is waited for, never cancelled, so that the service
        is not cut in the middle of one. A failed one is logged; a lost lease ends the task."""
        interval = self._config.checkpoint_interval
        while not run.done.is_set():
            wanted = asyncio.ensure_future(run.checkpoint_wanted.wait())
            done = asyncio.ensure_future(run.done.wait())
            try:
                await asyncio.wait({wanted, done}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wanted.cancel()
                done.cancel()
            if run.done.is_set():
                return
            message = "requested checkpoint" if run.checkpoint_wanted.is_set() else "periodic checkpoint"
            run.checkpoint_wanted.clear()
            try:
                await asyncio.shield(self._worktrees.checkpoint(run.claimed, message))
            except (MakimaError, TaskSetupError, GitError, OSError) as err:
                if is_lease_lost(err):
                    raise
                self._log(f"task {run.claimed.task.id}: periodic checkpoint failed ({err})")


class _TaskRun:
    """A claimed task while the daemon works on it."""

    def __init__(self, claimed: daemon_pb2.ClaimedTask) -> None:
        self.claimed = claimed
        # Set when a heartbeat says the task is not this daemon's any more.
        self.lost = asyncio.Event()
        # Set once the command has exited and its output is read: periodic checkpoints end.
        self.done = asyncio.Event()
        # Set by `Daemon.request_checkpoints`: checkpoint now, whatever the interval.
        self.checkpoint_wanted = asyncio.Event()


class _OutputRecorder:
    """Turns the lines a command prints into OUTPUT events and records them in order, in batches.

    One batch is in flight at a time, so the service stores sequences in the order they were read.
    A batch that fails with UNAVAILABLE (or a deadline) is resent unchanged until it is stored: the
    service acknowledges the events it already had as duplicates.
    """

    def __init__(
        self, client: AsyncClient, claimed: daemon_pb2.ClaimedTask, config: DaemonConfig, log: Callable[[str], None]
    ) -> None:
        self._client = client
        self._task_id = claimed.task.id
        self._lease_token = claimed.lease_token
        self._config = config
        self._log = log
        self._next_sequence = claimed.last_event_sequence + 1
        self._pending: list[resources_pb2.NewTaskEvent] = []
        self._pending_chars = 0
        self._arrived = asyncio.Event()  # pending events, or the end of the output
        self._full = asyncio.Event()  # a whole batch is pending, or the end of the output
        self._room = asyncio.Event()  # the readers may read on
        self._room.set()
        self._ended = False

    def add(self, text: str, stream: str) -> None:
        """Queue one line as the next event; its sequence and time are fixed from now on."""
        event = resources_pb2.NewTaskEvent(
            sequence=self._next_sequence,
            kind=OUTPUT,
            # PostgreSQL stores no NUL character, so the service refuses it: it is shown as U+FFFD.
            text=text.replace("\x00", "\ufffd"),
            data=struct_pb2.Struct(fields={"stream": struct_pb2.Value(string_value=stream)}),
            event_time=_now(),
        )
        self._next_sequence += 1
        self._pending.append(event)
        self._pending_chars += len(event.text)
        self._arrived.set()
        if len(self._pending) >= self._config.batch_lines or self._pending_chars >= MAX_BATCH_CHARS:
            self._full.set()
        if self._pending_chars >= MAX_PENDING_CHARS:
            self._room.clear()

    async def read(self, stream: asyncio.StreamReader, name: str) -> None:
        """Every line of `stream` until its end, decoded as UTF-8 (bad bytes become U+FFFD)."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        buffer = ""
        while chunk := await stream.read(_READ_SIZE):
            buffer += decoder.decode(chunk)
            *lines, buffer = buffer.split("\n")
            for line in lines:
                self._add_line(line.removesuffix("\r"), name)
            if len(buffer) >= MAX_LINE_CHARS:  # a line this long is recorded as it comes, in pieces
                whole = len(buffer) - len(buffer) % MAX_LINE_CHARS
                self._add_line(buffer[:whole], name)
                buffer = buffer[whole:]
            await self._room.wait()
        buffer += decoder.decode(b"", final=True)
        if buffer:
            self._add_line(buffer.removesuffix("\r"), name)

    def _add_line(self, line: str, stream: str) -> None:
        """One line as one event (an empty line too), or a line longer than MAX_LINE_CHARS as
        consecutive pieces."""
        for start in range(0, max(len(line), 1), MAX_LINE_CHARS):
            self.add(line[start : start + MAX_LINE_CHARS], stream)

    async def send(self) -> None:
        """Record the pending events until `end()`; raises the MakimaError that no retry cures."""
        while True:
            if not self._pending:
                if self._ended:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if not self._full.is_set():  # let the batch fill for a moment: fewer, larger calls
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), timeout=self._config.batch_seconds)
            await self._record(self._take_batch())

    @property
    def unsent(self) -> int:
        """Events read and not recorded yet."""
        return len(self._pending)

    def end(self) -> None:
        """The output is all read: `send()` returns once every event is recorded."""
        self._ended = True
        self._arrived.set()
        self._full.set()

    def _take_batch(self) -> daemon_pb2.RecordTaskEventsRequest:
        count = chars = 0
        for event in self._pending:
            if count == self._config.batch_lines or (count and chars + len(event.text) > MAX_BATCH_CHARS):
                break
            count += 1
            chars += len(event.text)
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._pending_chars -= chars
        if len(self._pending) < self._config.batch_lines and self._pending_chars < MAX_BATCH_CHARS and not self._ended:
            self._full.clear()
        if self._pending_chars < MAX_PENDING_CHARS:
            self._room.set()
        return daemon_pb2.RecordTaskEventsRequest(task_id=self._task_id, lease_token=self._lease_token, events=batch)

    async def _record(self, request: daemon_pb2.RecordTaskEventsRequest) -> None:
        failures = 0
        while True:
            try:
                # A list: the client resends it whole within the call's deadline on UNAVAILABLE.
                await self._client.record_task_events([request])
                return
            except (UnavailableError, DeadlineExceededError) as err:
                failures += 1
                delay = _OUTPUT_RETRY.backoff(failures) or 0.0
                self._log(f"task {self._task_id}: recording output failed ({err}); retrying in {delay:.1f} s")
                await asyncio.sleep(delay)


def _environment(claimed: daemon_pb2.ClaimedTask) -> dict[str, str]:
    task = claimed.task
    return {
        **os.environ,
        "MAKIMA_TASK_ID": task.id,
        "MAKIMA_TASK_NAME": task.name,
        "MAKIMA_TASK_INSTRUCTIONS": task.instructions,
        "MAKIMA_CONTRACT_ID": task.contract_id,
        "MAKIMA_PHASE": claimed.phase,
    }


class _Command(asyncio.subprocess.SubprocessStreamProtocol):
    """A running command: its output streams, and `exited` set as soon as its shell exits.

    asyncio's Process.wait() would not do: it also waits until every pipe is closed, which a process
    the command left in the background can put off for as long as it runs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_READ_SIZE, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


async def _terminate(pid: int, command: _Command, grace: float) -> None:
    """SIGTERM to the command's process group, SIGKILL if it has not exited after `grace` seconds."""
    _signal_group(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(command.exited.wait(), timeout=grace)
    except TimeoutError:
        _signal_group(pid, signal.SIGKILL)
        await command.exited.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The command is the leader of its own session and process group (start_new_session).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _drain(readers: list[asyncio.Task[None]]) -> None:
    """Wait for the rest of the output; a pipe still held open by a process that left the command's
    group stops being read after a while."""
    _done, late = await asyncio.wait(readers, timeout=_DRAIN_SECONDS)
    for reader in late:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for reader in readers:
        if not reader.cancelled() and (err := reader.exception()) is not None:
            raise err


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _one_line(text: str) -> str:
    """A name as one line of the daemon's log."""
    return " ".join(text.split())
