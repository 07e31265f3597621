"""`makima daemon run`: the reference daemon, the command-line face of makima.client.daemon.

It prints one line per step on stderr (quiet with --quiet) and stops on SIGINT or SIGTERM: no more
claims, running commands terminated, their tasks reported INTERRUPTED, exit status 128 + the signal
(130, 143) as a shell reports a process ended by it. Otherwise it exits 0 once stopped by --once or
--until-idle, or 64 + the gRPC code of a failure that retrying cannot cure, like every `makima`
command.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from makima.cli._render import enum_names
from makima.client import AsyncClient
from makima.client.daemon import Daemon, DaemonConfig
from makima.v1 import resources_pb2

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
USAGE_EXIT = 2
_KINDS = enum_names(resources_pb2.TaskKind.DESCRIPTOR)
_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)

_DESCRIPTION = """\
Register as a daemon, claim tasks and run COMMAND through the shell for each one: in DIR/<task id>,
materialized from the commit the claim names when the task's worktree is daemon-held, in the
service's own directory when the service holds it (a daemon on the service's machine), else a plain
directory. The command gets
MAKIMA_TASK_ID, MAKIMA_TASK_NAME, MAKIMA_TASK_INSTRUCTIONS, MAKIMA_CONTRACT_ID and MAKIMA_PHASE in
its environment. Each line it prints is recorded as an output event of the task (stderr lines with
data.stream = stderr). When it exits, the worktree is checkpointed and the task reported COMPLETED
(exit status 0) or FAILED.

SIGINT or SIGTERM stops the daemon: no more claims, running commands get SIGTERM (SIGKILL 5 s
later), their tasks are reported INTERRUPTED (resumable), and it exits with 128 + the signal
(130, 143). SIGUSR1 checkpoints every running task at once (a checkpoint on request). With --once
it exits 0 after one task, with --until-idle once no task is pending and none runs, whatever the
tasks' statuses."""

EXAMPLES = (
    "makima daemon run --dir ~/makima-tasks --command 'my-agent --task \"$MAKIMA_TASK_ID\"'",
    "makima daemon run --dir work --kinds worker --max-tasks 4 --checkpoint-interval 300 --command ./agent.sh",
    "makima daemon run --once --dir /tmp/work --command 'echo \"$MAKIMA_TASK_INSTRUCTIONS\"'",
)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _task_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000: {text!r}")
    return value


def add_commands(
    commands: argparse._SubParsersAction[_Parser],
    *,
    global_options: Callable[[argparse.ArgumentParser], None],
    examples: Callable[[Sequence[str]], str],
) -> None:
    """Add `daemon run` to the `makima` command line; `global_options` adds the connection options."""
    group = commands.add_parser(
        "daemon",
        help="run tasks on this machine: the reference daemon (daemon run --help)",
        description="Run tasks on this machine.",
        epilog=examples(EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    global_options(group)
    verbs = group.add_subparsers(dest="daemon_command", required=True, metavar="COMMAND")
    p = verbs.add_parser(
        "run",
        help="claim tasks and run a command for each one",
        description=_DESCRIPTION,
        epilog=examples(EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    global_options(p)
    p.add_argument(
        "--command", dest="shell_command", required=True, help="shell command to run for each task (the agent)"
    )
    p.add_argument("--dir", required=True, type=Path, metavar="DIR", help="directory of the tasks' directories")
    p.add_argument("--name", default=socket.gethostname(), help="name of the daemon (default: the host name)")
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=list(_KINDS),
        metavar="KIND",
        help=f"only claim tasks of these kinds: {', '.join(_KINDS)} (default: all)",
    )
    p.add_argument("--once", action="store_true", help="run one task, then exit")
    p.add_argument(
        "--until-idle",
        action="store_true",
        help="run tasks until none is pending and none runs, then exit (for scripts)",
    )
    p.add_argument(
        "--max-tasks", type=_task_count, default=1, metavar="N", help="run up to N tasks at once (default: 1)"
    )
    p.add_argument(
        "--checkpoint-interval",
        type=_positive,
        metavar="SECONDS",
        help="also checkpoint running tasks this often (default: only when the command exits)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace, connection: dict[str, Any]) -> int:
    """Run `makima daemon run` until it stops, connected with `connection` (AsyncClient's address,
    api_key, timeout and tls); returns the exit status (MakimaError propagates)."""
    try:
        config = DaemonConfig(
            command=args.shell_command,
            directory=args.dir,
            name=args.name,
            kinds=tuple(resources_pb2.TaskKind.ValueType(_KINDS[kind]) for kind in args.kinds or ()),
            once=args.once,
            until_idle=args.until_idle,
            max_tasks=args.max_tasks,
            checkpoint_interval=args.checkpoint_interval,
        )
    except ValueError as err:  # a usage error, as argparse reports its own
        print(f"makima daemon run: error: {err}", file=sys.stderr)
        return USAGE_EXIT
    return asyncio.run(_serve(args, config, connection))


async def _serve(args: argparse.Namespace, config: DaemonConfig, connection: dict[str, Any]) -> int:
    log = _quiet if args.quiet else _step
    received: list[signal.Signals] = []
    async with AsyncClient(**connection) as client:
        daemon = Daemon(client, config, log=log)

        def stop(signum: signal.Signals) -> None:
            received.append(signum)
            log(f"stopping on {signum.name}")
            daemon.stop(f"the daemon got {signum.name}")

        def checkpoint() -> None:
            log("checkpointing the running tasks on SIGUSR1")
            daemon.request_checkpoints()

        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
        loop.add_signal_handler(signal.SIGUSR1, checkpoint)
        try:
            await daemon.run()
        finally:
            for signum in (*_STOP_SIGNALS, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
    return 128 + received[0] if received else 0


def _step(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _quiet(_line: str) -> None:
    pass
