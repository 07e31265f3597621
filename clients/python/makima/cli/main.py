"""`makima`: the command line of the makima history & resume service, over makima.client.

Commands are grouped noun-verb (`makima task rewind`), as gh and kubectl do; today's flat names
(`makima task-rewind`) stay as aliases so that scripts keep working. Output is a listing for people
by default (tables fit the terminal, ids shortened to their unique prefix), full ids with `-o wide`,
and the proto JSON mapping with `--json` (`-o json`). A failed call prints one line
`error: CODE[ REASON]: message` on stderr (a JSON object under --json) and exits with 64 + the gRPC
status code, as grpcurl does, so scripts can tell NOT_FOUND from UNAVAILABLE without parsing text.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from makima.cli import _completion, _config, daemon
from makima.cli._render import (
    Output,
    View,
    enum_names,
    event_line,
    json_line,
    timeline_header,
    to_json,
    to_text,
)
from makima.client import (
    ADDRESS_ENV,
    API_KEY_ENV,
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    Client,
    MakimaError,
    NotFoundError,
    Paged,
    RetryPolicy,
    Tls,
    UnavailableError,
)
from makima.v1 import resources_pb2, supervisor_pb2, task_fork_pb2

RPC_ERROR_EXIT_BASE = 64
INTERRUPTED_EXIT = 130
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
# A follower outlives server restarts: once connected, it reconnects for as long as the user lets it run.
FOLLOW_RETRY = RetryPolicy(max_attempts=None, max_backoff=10.0)
PROGRESS_DELAY = 1.0  # seconds a call runs before a terminal shows that it is waiting

Run = Callable[[Client, argparse.Namespace], Output | None]
Setup = Callable[[argparse.ArgumentParser], Run]
LocalRun = Callable[[argparse.Namespace], int]
LocalSetup = Callable[[argparse.ArgumentParser], LocalRun]


@dataclass(frozen=True)
class Subject:
    """The resource a command acts on, taken as its first positional argument."""

    dest: str
    metavar: str


CONTRACT = Subject("contract_id", "CONTRACT_ID")
TASK = Subject("task_id", "TASK_ID")


@dataclass(frozen=True)
class Command:
    """One command: `path` is its noun-verb name, `alias` the flat name it had before the grouping.

    `subject` adds the id positional, `mutation` the `--request-id` option; `local` commands run
    without a server (their setup returns a LocalRun)."""

    path: tuple[str, ...]
    summary: str
    examples: tuple[str, ...]
    setup: Setup | LocalSetup
    alias: str | None = None
    subject: Subject | None = None
    mutation: bool = False
    local: bool = False


_COMMANDS: list[Command] = []
# The nouns, in the order `makima --help` lists them.
_NOUNS = {
    "contract": "contracts and their phases",
    "supervisor": "a contract's supervisor task",
    "conversation": "a supervisor's or a task's conversation",
    "task": "tasks, their history, checkpoints and code",
    "config": "contexts: named servers and keys in the config file",
}


def command(
    name: str,
    summary: str,
    *examples: str,
    alias: str | None = None,
    subject: Subject | None = None,
    mutation: bool = False,
    local: bool = False,
) -> Callable[[Any], Any]:
    """Register a command named "noun verb" (or one word); its setup function adds the arguments
    and returns what the command runs."""

    def register(setup: Any) -> Any:
        _COMMANDS.append(Command(tuple(name.split()), summary, examples, setup, alias, subject, mutation, local))
        return setup

    return register


def _configure(p: argparse.ArgumentParser, cmd: Command) -> None:
    if cmd.subject is not None:
        p.add_argument(cmd.subject.dest, metavar=cmd.subject.metavar, help="its id, or a unique prefix of it")
    run = cmd.setup(p)
    ids = [(action.dest, _ID_KINDS[action.metavar]) for action in p._actions if action.metavar in _ID_KINDS]
    # Tasks and contracts first: a checkpoint prefix is looked up among its (resolved) task's checkpoints.
    p.set_defaults(ids=sorted(ids, key=lambda pair: pair[1] not in {"contract", "task"}))
    if cmd.mutation:
        p.add_argument(
            "--request-id",
            default="",
            metavar="UUID",
            help="idempotency key: running the command again with it repeats no effect (default: a new one)",
        )
    p.set_defaults(run=run, local=cmd.local)


# The metavars of id arguments, and the kind of resource each names: one place says what takes an id.
_ID_KINDS = {
    "CONTRACT_ID": "contract",
    "TASK_ID": "task",
    "CHECKPOINT_ID": "checkpoint",
    "BASE_CHECKPOINT_ID": "checkpoint",
    "TARGET_CHECKPOINT_ID": "checkpoint",
    "SNAPSHOT_ID": "snapshot",
}
_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{0,34}", re.IGNORECASE)


class UsageError(Exception):
    """A mistake in the command line found only with the server's help (an ambiguous id prefix)."""


def _resolve_ids(c: Client, a: argparse.Namespace) -> None:
    """Replace each id prefix (up to 35 hex digits or dashes) by the one full id it starts, as git
    accepts an abbreviated commit and docker any unique prefix of an id: the owner's resources of that
    kind are listed to find it. None is NOT_FOUND; several are a usage error naming them."""
    for dest, kind in a.ids:
        value = getattr(a, dest)
        if not value or not _PREFIX.fullmatch(value):
            continue  # a full id, or something the server will judge
        matches = sorted({i for i in _candidates(c, a, kind) if i.startswith(value.lower())})
        if not matches:
            raise NotFoundError(grpc.StatusCode.NOT_FOUND, f"no {kind} id starts with {value!r}")
        if len(matches) > 1:
            raise UsageError(f"{kind} id prefix {value!r} is ambiguous: it starts {', '.join(matches)}")
        setattr(a, dest, matches[0])


def _candidates(c: Client, a: argparse.Namespace, kind: str) -> list[str]:
    if kind == "contract":
        return [x.id for x in c.list_contracts.items(page_size=1000)]
    if kind == "task":
        return [x.id for x in c.list_tasks.items(page_size=1000)]
    task = getattr(a, "task_id", None) or getattr(a, "task", None)
    contract = getattr(a, "contract_id", None) or getattr(a, "contract", None)
    if not task and contract:  # a checkpoint or snapshot of the contract's supervisor
        task = c.get_contract(contract_id=contract).contract.supervisor_task_id
    if not task:
        raise UsageError(f"a {kind} id prefix is only looked up within its task: give the full {kind} id")
    if kind == "checkpoint":
        return [x.id for x in c.list_checkpoints.items(task_id=task, page_size=1000)]
    return [x.id for x in c.list_conversation_snapshots.items(task_id=task, page_size=1000)]


def _present(**fields: Any) -> dict[str, Any]:
    """Request fields without the options left out (None), so unset optional fields stay unset."""
    return {name: value for name, value in fields.items() if value is not None}


def _time(text: str) -> timestamp_pb2.Timestamp:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


def _enum_filter(p: argparse.ArgumentParser, enum: EnumDescriptor, name: str, only: str) -> dict[str, int]:
    """A repeatable `--NAME` filter over an enum's short names; returns the names' numbers."""
    names = enum_names(enum)
    p.add_argument(
        f"--{name}",
        action="append",
        choices=list(names),
        metavar=name.upper(),
        help=f"{only} (repeatable): {', '.join(names)}",
    )
    return names


def _time_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_time, metavar="TIME", help="only from this ISO 8601 time on (UTC if no offset)")
    p.add_argument("--until", type=_time, metavar="TIME", help="only before this ISO 8601 time")


def _times(a: argparse.Namespace) -> dict[str, Any]:
    return _present(start_time=a.since, end_time=a.until)


def _worktree_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--empty-worktree", action="store_true", help="give it a new, empty git worktree")
    source.add_argument("--repository", metavar="PATH", help="give it a worktree cloned from this repository")
    p.add_argument("--ref", default="", help="with --repository: branch, tag or commit to start from")
    _placement_option(p, "service; alone, it means an empty worktree held there")


_PLACEMENTS = {"service": resources_pb2.WORKTREE_PLACEMENT_SERVICE, "daemon": resources_pb2.WORKTREE_PLACEMENT_DAEMON}


def _placement_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--placement",
        choices=sorted(_PLACEMENTS),
        default=None,
        help="where the worktree lives: held by the service (on its machine) or by the daemon that claims "
        f"the task (materialized from the service's checkpoints); default {default}",
    )


def _placement(a: argparse.Namespace) -> int | None:
    return _PLACEMENTS[a.placement] if a.placement else None


def _worktree(a: argparse.Namespace) -> resources_pb2.WorktreeSpec | None:
    placement = _present(placement=_placement(a))
    if a.repository:
        return resources_pb2.WorktreeSpec(
            source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=a.repository, ref=a.ref, **placement
        )
    if a.empty_worktree or placement:  # a placement alone asks for an empty worktree held there
        return resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY, **placement)
    return None


def _all_pages(call: Paged[Any, Any, Any], field: str, *, limit: int | None = None, **fields: Any) -> Message:
    """The first page with the items of every later page appended: one message to print."""
    merged: Any = None
    for page in call.pages(**fields):
        if merged is None:
            merged = page
        else:
            getattr(merged, field).extend(getattr(page, field))
        if limit is not None and len(getattr(merged, field)) >= limit:
            del getattr(merged, field)[limit:]
            break
    merged.next_page_token = ""
    first_page: Message = merged
    return first_page


# Contracts and their supervisor


@command(
    "contract create",
    "create a contract",
    "makima contract create --name 'login page' --phase plan",
    alias="contract-create",
    mutation=True,
)
def _contract_create(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--name", required=True, help="name of the contract")
    p.add_argument("--description", default="", help="what the contract is for")
    p.add_argument("--phase", default="", help="initial phase (default: research)")
    return lambda c, a: c.create_contract(
        name=a.name, description=a.description, initial_phase=a.phase, request_id=a.request_id
    )


@command("contract get", "show a contract", 'makima contract get "$CONTRACT"', alias="contract-get", subject=CONTRACT)
def _contract_get(p: argparse.ArgumentParser) -> Run:
    return lambda c, a: c.get_contract(contract_id=a.contract_id)


@command(
    "contract list",
    "list your contracts, newest first",
    "makima contract list",
    "makima contract list --status active -o wide",
    alias="contract-list",
)
def _contract_list(p: argparse.ArgumentParser) -> Run:
    statuses = _enum_filter(p, resources_pb2.ContractStatus.DESCRIPTOR, "status", "only in this status")
    p.add_argument("--limit", type=int, metavar="N", help="at most N contracts (default: all)")
    return lambda c, a: _all_pages(
        c.list_contracts, "contracts", limit=a.limit, statuses=[statuses[s] for s in a.status or ()]
    )


@command(
    "contract advance-phase",
    "move a contract to another phase",
    'makima contract advance-phase "$CONTRACT" execute',
    'makima contract advance-phase "$CONTRACT" review --expected-version 3',
    alias="advance-phase",
    subject=CONTRACT,
    mutation=True,
)
def _advance_phase(p: argparse.ArgumentParser) -> Run:
    p.add_argument("phase", metavar="PHASE")
    p.add_argument("--expected-version", type=int, help="only if the contract is at this version, else ABORTED")
    return lambda c, a: c.advance_phase(
        **_present(
            contract_id=a.contract_id, phase=a.phase, expected_version=a.expected_version, request_id=a.request_id
        )
    )


@command(
    "contract history",
    "show a contract's phases and everything that happened in it",
    'makima contract history "$CONTRACT"',
    'makima contract history "$CONTRACT" --phase plan --kind phase_advanced',
    alias="contract-history",
    subject=CONTRACT,
)
def _contract_history(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--phase", default="", help="only events recorded while in this phase")
    kinds = _enum_filter(p, resources_pb2.TimelineEventKind.DESCRIPTOR, "kind", "only events of this kind")
    _time_options(p)
    return lambda c, a: _all_pages(
        c.get_contract_history,
        "events",
        contract_id=a.contract_id,
        phase=a.phase,
        kinds=[kinds[k] for k in a.kind or ()],
        **_times(a),
    )


@command(
    "supervisor start",
    "start the supervisor task of a contract",
    'makima supervisor start "$CONTRACT" --instructions "plan the login page" --empty-worktree',
    alias="supervisor-start",
    subject=CONTRACT,
    mutation=True,
)
def _supervisor_start(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--instructions", default="", help="what the supervisor starts from")
    _worktree_options(p)
    return lambda c, a: c.start_supervisor(
        **_present(
            contract_id=a.contract_id, instructions=a.instructions, worktree=_worktree(a), request_id=a.request_id
        )
    )


@command(
    "supervisor resume",
    "resume an interrupted supervisor",
    'makima supervisor resume "$CONTRACT"',
    'makima supervisor resume "$CONTRACT" --mode restart_phase',
    'makima supervisor resume "$CONTRACT" --mode from_checkpoint --checkpoint "$CHECKPOINT" --rewind-code',
    alias="resume",
    subject=CONTRACT,
    mutation=True,
)
def _resume(p: argparse.ArgumentParser) -> Run:
    modes = enum_names(supervisor_pb2.ResumeMode.DESCRIPTOR)
    p.add_argument(
        "--mode",
        choices=list(modes),
        default="continue",
        help="continue the conversation, restart the phase with a cleared one, or go back to a checkpoint "
        "(default: continue)",
    )
    p.add_argument("--checkpoint", default="", metavar="CHECKPOINT_ID", help="with --mode from_checkpoint")
    p.add_argument("--rewind-code", action="store_true", help="with from_checkpoint: also rewind the worktree")

    def run(c: Client, a: argparse.Namespace) -> Output:
        if a.mode == "from_checkpoint" and not a.checkpoint:
            p.error("--mode from_checkpoint requires --checkpoint")
        return c.resume_supervisor(
            contract_id=a.contract_id,
            mode=modes[a.mode],
            checkpoint_id=a.checkpoint,
            rewind_code=a.rewind_code,
            request_id=a.request_id,
        )

    return run


def _conversation_target(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    target = p.add_mutually_exclusive_group(required=required)
    target.add_argument("--contract", metavar="CONTRACT_ID", help="the supervisor conversation of this contract")
    target.add_argument("--task", metavar="TASK_ID", help="the conversation of this task")


@command(
    "conversation rewind",
    "rewind a conversation to a message (what is removed stays in a snapshot)",
    'makima conversation rewind --contract "$CONTRACT" --by-message-count 2',
    'makima conversation rewind --task "$TASK" --to-message-index 9 --rewind-code --expected-message-count 14',
    alias="rewind-conversation",
    mutation=True,
)
def _rewind_conversation(p: argparse.ArgumentParser) -> Run:
    _conversation_target(p)
    point = p.add_mutually_exclusive_group()
    point.add_argument("--to-message-index", type=int, metavar="N", help="keep messages 0..N")
    point.add_argument("--by-message-count", type=int, metavar="N", help="remove the last N messages (default: 1)")
    p.add_argument("--rewind-code", action="store_true", help="also rewind the code to the matching checkpoint")
    p.add_argument("--expected-message-count", type=int, metavar="N", help="only if there are N messages, else ABORTED")
    return lambda c, a: c.rewind_conversation(
        **_present(
            contract_id=a.contract,
            task_id=a.task,
            to_message_index=a.to_message_index,
            by_message_count=a.by_message_count,
            expected_message_count=a.expected_message_count,
            rewind_code=a.rewind_code,
            request_id=a.request_id,
        )
    )


@command(
    "conversation restore",
    "undo a rewind: bring a conversation back from its snapshot",
    'makima conversation restore "$SNAPSHOT"',
    alias="restore-conversation",
    mutation=True,
)
def _restore_conversation(p: argparse.ArgumentParser) -> Run:
    p.add_argument("snapshot_id", metavar="SNAPSHOT_ID")
    p.add_argument("--expected-message-count", type=int, metavar="N", help="only if there are N messages, else ABORTED")
    return lambda c, a: c.restore_conversation(
        **_present(snapshot_id=a.snapshot_id, expected_message_count=a.expected_message_count, request_id=a.request_id)
    )


@command(
    "conversation show",
    "show a supervisor's or a task's conversation, or one of its snapshots",
    'makima conversation show --contract "$CONTRACT"',
    'makima conversation show --task "$TASK" --snapshot "$SNAPSHOT"',
    alias="conversation",
)
def _conversation(p: argparse.ArgumentParser) -> Run:
    # Checked when it runs: `makima conversation` also parses these before a verb such as `rewind`.
    _conversation_target(p, required=False)
    p.add_argument("--snapshot", default="", metavar="SNAPSHOT_ID", help="show this snapshot instead")

    def run(c: Client, a: argparse.Namespace) -> Output:
        if not (a.contract or a.task):
            p.error("one of the arguments --contract --task is required")
        if a.contract:
            return _all_pages(c.get_supervisor_conversation, "messages", contract_id=a.contract, snapshot_id=a.snapshot)
        return _all_pages(c.get_task_conversation, "messages", task_id=a.task, snapshot_id=a.snapshot)

    return run


# Tasks


@command(
    "task create",
    "create a task",
    "makima task create --name 'write tests' --contract \"$CONTRACT\" --instructions 'cover the login form'",
    "makima task create --name spike --repository repos/app --ref main",
    alias="task-create",
    mutation=True,
)
def _task_create(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--name", required=True, help="name of the task")
    p.add_argument("--instructions", default="", help="what the agent starts from")
    p.add_argument("--contract", default="", metavar="CONTRACT_ID", help="contract the task belongs to")
    p.add_argument("--parent", default="", metavar="TASK_ID", help="task that spawns this one")
    _worktree_options(p)
    return lambda c, a: c.create_task(
        **_present(
            name=a.name,
            instructions=a.instructions,
            contract_id=a.contract,
            parent_task_id=a.parent,
            worktree=_worktree(a),
            request_id=a.request_id,
        )
    )


@command("task get", "show a task", 'makima task get "$TASK"', alias="task-get", subject=TASK)
def _task_get(p: argparse.ArgumentParser) -> Run:
    return lambda c, a: c.get_task(task_id=a.task_id)


@command(
    "task list",
    "list your tasks, newest first",
    "makima task list --status running --status interrupted",
    'makima task list --contract "$CONTRACT"',
    alias="task-list",
)
def _task_list(p: argparse.ArgumentParser) -> Run:
    statuses = _enum_filter(p, resources_pb2.TaskStatus.DESCRIPTOR, "status", "only in this status")
    p.add_argument("--contract", default="", metavar="CONTRACT_ID", help="only the tasks of this contract")
    p.add_argument("--limit", type=int, metavar="N", help="at most N tasks (default: all)")
    return lambda c, a: _all_pages(
        c.list_tasks, "tasks", limit=a.limit, contract_id=a.contract, statuses=[statuses[s] for s in a.status or ()]
    )


@command(
    "task history",
    "show a task's conversation and its events (output, tool calls, tool results)",
    'makima task history "$TASK"',
    'makima --json task history "$TASK" --kind tool_call --kind tool_result --since 2026-01-15T09:00',
    alias="task-history",
    subject=TASK,
)
def _task_history(p: argparse.ArgumentParser) -> Run:
    kinds = _enum_filter(p, resources_pb2.TaskEventKind.DESCRIPTOR, "kind", "only events of this kind")
    _time_options(p)
    return lambda c, a: {
        "conversation": _all_pages(c.get_task_conversation, "messages", task_id=a.task_id),
        "events": _all_pages(
            c.list_task_events, "events", task_id=a.task_id, kinds=[kinds[k] for k in a.kind or ()], **_times(a)
        ),
    }


@command(
    "task checkpoints",
    "list a task's checkpoints, newest first",
    'makima task checkpoints "$TASK"',
    alias="task-checkpoints",
    subject=TASK,
)
def _task_checkpoints(p: argparse.ArgumentParser) -> Run:
    return lambda c, a: _all_pages(c.list_checkpoints, "checkpoints", task_id=a.task_id)


@command(
    "task checkpoint",
    "commit a task's worktree and snapshot its conversation",
    "makima task checkpoint \"$TASK\" --message 'tests pass'",
    alias="task-checkpoint",
    subject=TASK,
    mutation=True,
)
def _task_checkpoint(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--message", default="", help="commit message (default: checkpoint)")
    return lambda c, a: c.create_checkpoint(task_id=a.task_id, message=a.message, request_id=a.request_id)


@command(
    "task snapshots",
    "list a task's conversation snapshots (what rewinds removed), newest first",
    'makima task snapshots "$TASK"',
    alias="task-snapshots",
    subject=TASK,
)
def _task_snapshots(p: argparse.ArgumentParser) -> Run:
    return lambda c, a: _all_pages(c.list_conversation_snapshots, "snapshots", task_id=a.task_id)


@command(
    "task compare",
    "list the files changed between two checkpoints, or a checkpoint and the live worktree",
    'makima task compare "$TASK" "$CHECKPOINT"',
    'makima task compare "$TASK" "$OLD_CHECKPOINT" "$NEW_CHECKPOINT"',
    alias="task-compare",
    subject=TASK,
)
def _task_compare(p: argparse.ArgumentParser) -> Run:
    p.add_argument("base", metavar="BASE_CHECKPOINT_ID")
    p.add_argument("target", nargs="?", default="", metavar="TARGET_CHECKPOINT_ID", help="default: the live worktree")
    return lambda c, a: c.compare_checkpoints(
        task_id=a.task_id, base_checkpoint_id=a.base, target_checkpoint_id=a.target
    )


@command(
    "task rewind",
    "rewind a task's code, conversation or both to a checkpoint (undoable)",
    'makima task rewind "$TASK" --checkpoint "$CHECKPOINT"',
    'makima task rewind "$TASK" --checkpoint "$CHECKPOINT" --mode both',
    alias="task-rewind",
    subject=TASK,
    mutation=True,
)
def _task_rewind(p: argparse.ArgumentParser) -> Run:
    modes = enum_names(task_fork_pb2.RewindMode.DESCRIPTOR)
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT_ID", help="checkpoint to rewind to")
    p.add_argument("--mode", choices=list(modes), default="code", help="what to rewind (default: code)")
    p.add_argument(
        "--force",
        action="store_true",
        help="delete ignored files or nested repositories standing where the checkpoint has other content",
    )
    return lambda c, a: c.rewind_task(
        task_id=a.task_id, checkpoint_id=a.checkpoint, mode=modes[a.mode], force=a.force, request_id=a.request_id
    )


@command(
    "task resume",
    "put an interrupted or failed task back to work",
    'makima task resume "$TASK"',
    alias="task-resume",
    subject=TASK,
    mutation=True,
)
def _task_resume(p: argparse.ArgumentParser) -> Run:
    return lambda c, a: c.resume_task(task_id=a.task_id, request_id=a.request_id)


@command(
    "task resume-from",
    "rewind a task to a checkpoint (code and conversation) and put it back to work",
    'makima task resume-from "$TASK" --checkpoint "$CHECKPOINT"',
    alias="task-resume-from",
    subject=TASK,
    mutation=True,
)
def _task_resume_from(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT_ID", help="checkpoint to resume from")
    return lambda c, a: c.resume_task_from_checkpoint(
        task_id=a.task_id, checkpoint_id=a.checkpoint, request_id=a.request_id
    )


@command(
    "task branch",
    "create a git branch at a checkpoint",
    'makima task branch "$TASK" before-refactor --checkpoint "$CHECKPOINT"',
    alias="task-branch",
    subject=TASK,
    mutation=True,
)
def _task_branch(p: argparse.ArgumentParser) -> Run:
    p.add_argument("branch", metavar="BRANCH", help="branch name, without refs/heads/")
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT_ID", help="checkpoint to branch at")
    return lambda c, a: c.create_branch(
        task_id=a.task_id, checkpoint_id=a.checkpoint, branch_name=a.branch, request_id=a.request_id
    )


@command(
    "task fork",
    "fork a new task from a checkpoint or a message of another task",
    'makima task fork "$TASK" --checkpoint "$CHECKPOINT"',
    'makima task fork "$TASK" --message-index 12 --name "try another approach"',
    alias="task-fork",
    subject=TASK,
    mutation=True,
)
def _task_fork(p: argparse.ArgumentParser) -> Run:
    point = p.add_mutually_exclusive_group(required=True)
    point.add_argument("--checkpoint", metavar="CHECKPOINT_ID", help="fork at this checkpoint")
    point.add_argument("--message-index", type=int, metavar="N", help="fork with messages 0..N")
    p.add_argument("--name", default="", help='name of the new task (default: "<name> (fork)")')
    p.add_argument("--branch", default="", help="branch of the new task (default: makima/<new task id>)")
    _placement_option(p, "the source task's")
    return lambda c, a: c.fork_task(
        **_present(
            task_id=a.task_id,
            checkpoint_id=a.checkpoint,
            message_index=a.message_index,
            name=a.name,
            branch_name=a.branch,
            placement=_placement(a),
            request_id=a.request_id,
        )
    )


@command(
    "task continue",
    "start a new task from another task's latest state (its worktree as it is now)",
    "makima task continue \"$TASK\" --instructions 'now add the error messages'",
    alias="task-continue",
    subject=TASK,
    mutation=True,
)
def _task_continue(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--name", default="", help='name of the new task (default: "<name> (continued)")')
    p.add_argument("--instructions", default="", help="what the new task starts from")
    _placement_option(p, "the source task's")
    return lambda c, a: c.continue_task(
        **_present(
            task_id=a.task_id,
            name=a.name,
            instructions=a.instructions,
            placement=_placement(a),
            request_id=a.request_id,
        )
    )


@command(
    "task lineage",
    "show the fork / continuation / sub-task tree of a task",
    'makima task lineage "$TASK"',
    alias="task-lineage",
    subject=TASK,
)
def _task_lineage(p: argparse.ArgumentParser) -> Run:
    return lambda c, a: c.get_task_lineage(task_id=a.task_id)


# Timeline


@command(
    "timeline",
    "list everything your contracts and tasks did, or follow it live",
    "makima timeline --contract \"$CONTRACT\" --since '2026-01-15 09:00'",
    "makima timeline --follow --after 1200",
    "makima --json timeline --follow --kind task_status_changed --limit 1",
)
def _timeline(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--contract", default="", metavar="CONTRACT_ID", help="only this contract and its tasks")
    p.add_argument("--task", default="", metavar="TASK_ID", help="only this task")
    kinds = _enum_filter(p, resources_pb2.TimelineEventKind.DESCRIPTOR, "kind", "only events of this kind")
    p.add_argument("--after", type=int, default=0, metavar="CURSOR", help="only events after this cursor")
    _time_options(p)
    p.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--follow",
        action="store_true",
        help="keep printing new events as they happen (with --json: one object per line)",
    )
    p.add_argument("--keep-alive", type=int, default=0, metavar="SECONDS", help="with --follow: keep-alive interval")

    def run(c: Client, a: argparse.Namespace) -> Output | None:
        fields = {"contract_id": a.contract, "task_id": a.task, "kinds": [kinds[k] for k in a.kind or ()]}
        if not a.follow:
            return _all_pages(
                c.list_timeline,
                "events",
                limit=a.limit,
                after_cursor=a.after,
                page_size=min(a.limit or 0, 1000),
                **fields,
                **_times(a),
            )
        if a.since or a.until:
            p.error("--since and --until cannot be combined with --follow")
        _follow(c, a, after_cursor=a.after, keep_alive_seconds=a.keep_alive, **fields)
        return None

    return run


def _follow(c: Client, a: argparse.Namespace, **request: Any) -> None:
    """Print the timeline as it happens. The first connection fails fast (a wrong address or key is
    an error, not a silent wait); after that, a lost stream is reconnected after the last cursor seen,
    saying so on stderr, so that no event is missed or printed twice."""
    view = _view(a)
    width = None if view.wide else view.width
    cursor, printed, connected, failures = request.pop("after_cursor"), 0, False, 0
    while True:
        try:
            for response in c.stream_timeline(after_cursor=cursor, **request):
                if not connected and not _as_json(a):
                    print(timeline_header(width=width, wide=view.wide), flush=True)
                connected, failures = True, 0
                if response.HasField("keep_alive"):
                    cursor = max(cursor, response.keep_alive.cursor)
                    continue
                event = response.event
                if event.cursor <= cursor:  # replayed after a reconnect: printed already
                    continue
                cursor = event.cursor
                print(json_line(event) if _as_json(a) else event_line(event, width=width, wide=view.wide), flush=True)
                printed += 1
                if printed == a.limit:
                    return
            lost = "the server closed the stream"
        except UnavailableError as err:
            if not connected:
                raise
            lost = f"the stream was lost ({err.message})"
        failures += 1
        delay = FOLLOW_RETRY.backoff(failures) or 0.0
        print(f"makima: {lost}; reconnecting after cursor {cursor} in {delay:.1f}s", file=sys.stderr, flush=True)
        time.sleep(delay)


# Local commands: no server involved


@command(
    "config set-context",
    "create or change a context (only the settings given change; an empty value removes one)",
    "makima config set-context prod --address makima.internal:50051 --api-key mk_... --use",
    "makima config set-context dev --tls-ca ca.pem",
    local=True,
)
def _config_set_context(p: argparse.ArgumentParser) -> LocalRun:
    p.add_argument("name", metavar="NAME")
    for name in _config.FIELDS:
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"set_{name}", metavar="VALUE", help=f"the {name}")
    p.add_argument("--use", action="store_true", help="also make it the current context")

    def run(a: argparse.Namespace) -> int:
        config = _config.load()
        settings = config.contexts.setdefault(a.name, {})
        for name in _config.FIELDS:
            value = getattr(a, f"set_{name}")
            if value == "":
                settings.pop(name, None)
            elif value is not None:
                settings[name] = value
        if a.use or not config.current_context:
            config.current_context = a.name
        path = _config.save(config)
        print(f"context {a.name!r} saved in {path}" + (" (current)" if config.current_context == a.name else ""))
        return 0

    return run


@command("config use-context", "make a context the current one", "makima config use-context prod", local=True)
def _config_use_context(p: argparse.ArgumentParser) -> LocalRun:
    p.add_argument("name", metavar="NAME")

    def run(a: argparse.Namespace) -> int:
        config = _config.load()
        if a.name not in config.contexts:
            p.error(f"no context {a.name!r} (known: {', '.join(config.contexts) or 'none'})")
        config.current_context = a.name
        _config.save(config)
        print(f"current context: {a.name}")
        return 0

    return run


@command(
    "config get-contexts",
    "list the contexts (keys are never shown)",
    "makima --json config get-contexts | python3 -m json.tool",
    local=True,
)
def _config_get_contexts(p: argparse.ArgumentParser) -> LocalRun:
    def run(a: argparse.Namespace) -> int:
        config = _config.load()
        rows = [
            {
                "name": name,
                "current": name == config.current_context,
                **{key: settings.get(key, "") for key in _config.FIELDS if key != "api_key"},
                "api_key_set": bool(settings.get("api_key")),
            }
            for name, settings in sorted(config.contexts.items())
        ]
        if _as_json(a):
            print(json.dumps({"contexts": rows}, indent=2))
            return 0
        headers = ["CURRENT", "NAME", "ADDRESS", "API KEY", "TLS"]
        table = [headers] + [
            [
                "*" if r["current"] else "",
                str(r["name"]),
                str(r["address"]),
                "set" if r["api_key_set"] else "",
                "yes" if r["tls_ca"] or r["tls_cert"] else "",
            ]
            for r in rows
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return 0

    return run


@command(
    "completion",
    "print the shell completion script of makima",
    'eval "$(makima completion bash)"   # in ~/.bashrc',
    'eval "$(makima completion zsh)"    # in ~/.zshrc',
    "makima completion fish > ~/.config/fish/completions/makima.fish",
    local=True,
)
def _completion_command(p: argparse.ArgumentParser) -> LocalRun:
    p.add_argument("shell", choices=_completion.SHELLS)

    def run(a: argparse.Namespace) -> int:
        print(_completion.script(build_parser(), a.shell), end="")
        return 0

    return run


def _global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The connection and output options; a subcommand accepts them too (`makima contract get ID --json`)
    without overriding what was given before the command name."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--address", default=default(None), help=f"server host:port (env {ADDRESS_ENV}, default {DEFAULT_ADDRESS})"
    )
    p.add_argument("--api-key", default=default(None), help=f"API key (env {API_KEY_ENV})")
    for flag, env, what in (
        ("--tls-ca", TLS_CA_ENV, "connect over TLS, verifying the server with this CA certificate (PEM)"),
        ("--tls-cert", TLS_CERT_ENV, "client certificate (PEM) for a server that requires one; needs --tls-key"),
        ("--tls-key", TLS_KEY_ENV, "private key (PEM) of --tls-cert"),
    ):
        p.add_argument(flag, default=default(None), metavar="FILE", help=f"{what} (env {env})")
    p.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of a listing")
    p.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"deadline of each call, retries included (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "wide", "json"),
        default=default("text"),
        help="text: tables fit the terminal, ids shortened; wide: full ids, nothing cut; json: as --json",
    )
    p.add_argument(
        "--context",
        default=default(None),
        metavar="NAME",
        help=f"use this context of {_config.config_path()} (env {_config.CONTEXT_ENV}, default: the current one)",
    )


def _as_json(a: argparse.Namespace) -> bool:
    return bool(a.json) or a.output == "json"


def _view(a: argparse.Namespace) -> View:
    """Tables fit the terminal; into a pipe (no terminal and no COLUMNS) nothing is cut."""
    width = shutil.get_terminal_size().columns if "COLUMNS" in os.environ or sys.stdout.isatty() else None
    return View(width, a.output == "wide")


def _connection_options(a: argparse.Namespace) -> dict[str, Any]:
    """Address, key, deadline and TLS of the client: flags, then the environment, then the context,
    then the client's defaults. ConfigError for TLS files that cannot serve, before any call."""
    context = _config.selected(_config.load(), a.context)
    api_key = a.api_key if a.api_key is not None else os.environ.get(API_KEY_ENV) or context.get("api_key")
    tls_files = [
        flag or os.environ.get(env) or context.get(key)
        for flag, env, key in (
            (a.tls_ca, TLS_CA_ENV, "tls_ca"),
            (a.tls_cert, TLS_CERT_ENV, "tls_cert"),
            (a.tls_key, TLS_KEY_ENV, "tls_key"),
        )
    ]
    try:
        tls = Tls.resolve(*tls_files)
    except (ValueError, OSError) as err:
        raise _config.ConfigError(f"TLS: {err}") from None
    return {  # an empty variable counts as unset, as an empty flag value does not
        "address": a.address or os.environ.get(ADDRESS_ENV) or context.get("address"),
        "api_key": api_key or "",
        "timeout": a.timeout,
        "tls": tls,
    }


def _examples(examples: Sequence[str]) -> str:
    return "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped command or choice, as git and gh say it."""

    def error(self, message: str) -> Any:  # NoReturn in argparse, which mypy cannot see through an override
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if wrong:
            choices = [c.strip("'") for c in wrong.group(2).split(", ")]
            guesses = difflib.get_close_matches(wrong.group(1), choices, n=1, cutoff=0.6)
            message = f"unknown {'command' if 'COMMAND' in message else 'choice'} {wrong.group(1)!r}"
            if guesses:
                message += f"; did you mean {guesses[0]}?"
            else:
                message += f" (choose from {', '.join(choices)})"
        super().error(message)


def _version() -> str:
    return importlib.metadata.version("makima-history")


def _add(commands: argparse._SubParsersAction[_Parser], name: str, *, options: bool = True, **kwargs: Any) -> _Parser:
    """A command's parser; `options` adds the global options after its name too (not for local
    commands, whose own --address and the like set a context)."""
    p: _Parser = commands.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    if options:
        _global_options(p, defaults=False)
    return p


def build_parser() -> argparse.ArgumentParser:
    aliases = "\n".join(f"  {c.alias:<22}makima {' '.join(c.path)}" for c in _COMMANDS if c.alias)
    parser = _Parser(
        prog="makima",
        description="Command line of the makima history & resume service.",
        epilog=f"environment:\n"
        f"  {ADDRESS_ENV}   server host:port (default {DEFAULT_ADDRESS})\n"
        f"  {API_KEY_ENV}   API key, sent as `authorization: Bearer <key>`\n"
        f"  {TLS_CA_ENV}, {TLS_CERT_ENV}, {TLS_KEY_ENV}   TLS files, as --tls-ca, --tls-cert, --tls-key\n"
        f"  {_config.CONTEXT_ENV}   context of the config file to use\n"
        "  settings come from flags, then the environment, then the context, then the defaults\n\n"
        "exit status:\n"
        "  0 success, 2 usage error, 130 interrupted, 141 its reader went away (`| head`),\n"
        "  64 + the gRPC status code of a failed call\n"
        "  (67 INVALID_ARGUMENT, 68 DEADLINE_EXCEEDED, 69 NOT_FOUND, 73 FAILED_PRECONDITION, 74 ABORTED,\n"
        "  78 UNAVAILABLE, 80 UNAUTHENTICATED)\n\n"
        f"earlier names, still accepted:\n{aliases}\n\n"
        + _examples(
            [
                "export MAKIMA_API_KEY=mk_...",
                "makima contract create --name 'login page' --phase plan",
                'makima --json contract get "$CONTRACT"',
                'makima task history "$TASK"',
                "makima timeline --follow",
                "makima daemon run --dir work --command ./agent.sh",
                "makima COMMAND --help   # options and examples of one command",
            ]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"makima {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    verbs: dict[str, argparse._SubParsersAction[_Parser]] = {}
    for noun, summary in _NOUNS.items():
        examples = [c.examples[0] for c in _COMMANDS if c.path[0] == noun]
        description = summary[0].upper() + summary[1:] + "."
        group = _add(
            commands, noun, options=noun != "config", help=summary, description=description, epilog=_examples(examples)
        )
        # A noun that was a command of its own (`makima conversation --task ID`) still runs it without a verb.
        earlier = next((c for c in _COMMANDS if c.alias == noun), None)
        if earlier is not None:
            _configure(group, earlier)
        verbs[noun] = group.add_subparsers(
            dest="verb", required=earlier is None, metavar="COMMAND", parser_class=_Parser
        )
    for cmd in _COMMANDS:
        at = verbs[cmd.path[0]] if len(cmd.path) == 2 else commands
        description = cmd.summary[0].upper() + cmd.summary[1:] + "."
        p = _add(
            at,
            cmd.path[-1],
            options=not cmd.local,
            help=cmd.summary,
            description=description,
            epilog=_examples(cmd.examples),
        )
        _configure(p, cmd)
    daemon.add_commands(commands, global_options=lambda p: _global_options(p, defaults=False), examples=_examples)
    for cmd in _COMMANDS:
        if (
            cmd.alias and cmd.alias not in _NOUNS
        ):  # no help=: argparse leaves it out of the command list, the epilog names it
            description = f"Earlier name of `makima {' '.join(cmd.path)}`: {cmd.summary}."
            _configure(_add(commands, cmd.alias, description=description, epilog=_examples(cmd.examples)), cmd)
    return parser


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    """On a terminal, a spinner on stderr once a call has run for PROGRESS_DELAY seconds, erased when
    it ends, so a long call (a task cloned from a large repository) does not look hung."""
    if not enabled:
        yield
        return
    done = threading.Event()

    def spin() -> None:
        if done.wait(PROGRESS_DELAY):
            return
        for frame in itertools.cycle("|/-\\"):
            sys.stderr.write(f"\r{frame} waiting for the server...")
            sys.stderr.flush()
            if done.wait(0.1):
                break
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        yield
    finally:
        done.set()
        spinner.join()


def _hint(err: MakimaError, options: dict[str, Any]) -> str | None:
    """What the user can do about a failure that is theirs to fix."""
    if err.code.name == "UNAUTHENTICATED" and not options["api_key"]:
        return (
            f"no API key was sent: set {API_KEY_ENV}, pass --api-key, or store one in a context "
            "(makima config set-context NAME --api-key KEY); keys come from `makima-server create-api-key`"
        )
    if err.code.name == "DEADLINE_EXCEEDED":
        return f"the call took longer than --timeout {options['timeout']:g} s; give it more with --timeout SECONDS"
    return None


def _report(err: MakimaError, hint: str | None, *, as_json: bool) -> None:
    """One line on stderr: `error: CODE[ REASON]: message` (the reason only when it says more than the
    code), then the hint; under --json one JSON object instead."""
    if as_json:
        error = {
            "code": err.code.name,
            "status": int(err.code.value[0]),
            "reason": err.reason,
            "message": err.message,
            "metadata": err.metadata,
            "field_violations": [{"field": v.field, "description": v.description} for v in err.field_violations],
            **({"hint": hint} if hint else {}),
        }
        print(json.dumps({"error": error}), file=sys.stderr)
        return
    label = err.code.name if err.reason == err.code.name else f"{err.code.name} {err.reason}"
    print(f"error: {label}: {err.message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command != "daemon" and args.local:
            return int(args.run(args))
        options = _connection_options(args)
    except _config.ConfigError as err:
        parser.error(str(err))
    try:
        if args.command == "daemon":  # a long-running asyncio program: its own client and exit status
            return daemon.run(args, options)
        with Client(**options) as client:
            with _progress(sys.stderr.isatty() and not getattr(args, "follow", False)):
                _resolve_ids(client, args)
                output = args.run(client, args)
            if output is not None:
                print(to_json(output) if _as_json(args) else to_text(output, _view(args)), flush=True)
    except MakimaError as err:
        _report(err, _hint(err, options), as_json=_as_json(args))
        return RPC_ERROR_EXIT_BASE + int(err.code.value[0])
    except UsageError as err:
        parser.error(str(err))
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    except BrokenPipeError:
        # The reader went away (`| head -1`): say nothing, and keep Python's exit from flushing into it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
