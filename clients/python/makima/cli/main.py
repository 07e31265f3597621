"""`makima`: the command line of the makima history & resume service, over makima.client.

Output is a listing for people by default and the proto JSON mapping with --json. A failed call
prints one line `error: CODE REASON: message` on stderr and exits with 64 + the gRPC status code,
as grpcurl does, so scripts can tell NOT_FOUND from UNAVAILABLE without parsing text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from makima.cli import daemon
from makima.cli._render import Output, enum_names, event_line, json_line, to_json, to_text
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
    Paged,
    RetryPolicy,
    Tls,
)
from makima.v1 import resources_pb2, supervisor_pb2, task_fork_pb2

RPC_ERROR_EXIT_BASE = 64
INTERRUPTED_EXIT = 130
USAGE_EXIT = 2
# A follower outlives server restarts: it reconnects for as long as the user lets it run.
FOLLOW_RETRY = RetryPolicy(max_attempts=None, max_backoff=10.0)

Run = Callable[[Client, argparse.Namespace], Output | None]
Setup = Callable[[argparse.ArgumentParser], Run]
_COMMANDS: list[tuple[str, str, tuple[str, ...], Setup]] = []


def command(name: str, summary: str, *examples: str) -> Callable[[Setup], Setup]:
    """Register a subcommand; its setup function adds the arguments and returns what the command runs."""

    def register(setup: Setup) -> Setup:
        _COMMANDS.append((name, summary, examples, setup))
        return setup

    return register


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


def _request_id_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--request-id",
        default="",
        metavar="UUID",
        help="idempotency key: running the command again with it repeats no effect (default: a new one)",
    )


def _kinds_option(p: argparse.ArgumentParser, enum: EnumDescriptor, what: str) -> dict[str, int]:
    names = enum_names(enum)
    p.add_argument(
        "--kind",
        action="append",
        choices=list(names),
        metavar="KIND",
        help=f"only {what} of this kind (repeatable): {', '.join(names)}",
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
    return merged  # type: ignore[no-any-return]


# Contracts and their supervisor


@command("contract-create", "create a contract", "makima contract-create --name 'login page' --phase plan")
def _contract_create(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--name", required=True, help="name of the contract")
    p.add_argument("--description", default="", help="what the contract is for")
    p.add_argument("--phase", default="", help="initial phase (default: research)")
    _request_id_option(p)
    return lambda c, a: c.create_contract(
        name=a.name, description=a.description, initial_phase=a.phase, request_id=a.request_id
    )


@command("contract-get", "show a contract", 'makima contract-get "$CONTRACT"')
def _contract_get(p: argparse.ArgumentParser) -> Run:
    p.add_argument("contract_id", metavar="CONTRACT_ID")
    return lambda c, a: c.get_contract(contract_id=a.contract_id)


@command(
    "advance-phase",
    "move a contract to another phase",
    'makima advance-phase "$CONTRACT" execute',
    'makima advance-phase "$CONTRACT" review --expected-version 3',
)
def _advance_phase(p: argparse.ArgumentParser) -> Run:
    p.add_argument("contract_id", metavar="CONTRACT_ID")
    p.add_argument("phase", metavar="PHASE")
    p.add_argument("--expected-version", type=int, help="only if the contract is at this version, else ABORTED")
    _request_id_option(p)
    return lambda c, a: c.advance_phase(
        **_present(
            contract_id=a.contract_id, phase=a.phase, expected_version=a.expected_version, request_id=a.request_id
        )
    )


@command(
    "contract-history",
    "show a contract's phases and everything that happened in it",
    'makima contract-history "$CONTRACT"',
    'makima contract-history "$CONTRACT" --phase plan --kind phase_advanced',
)
def _contract_history(p: argparse.ArgumentParser) -> Run:
    p.add_argument("contract_id", metavar="CONTRACT_ID")
    p.add_argument("--phase", default="", help="only events recorded while in this phase")
    kinds = _kinds_option(p, resources_pb2.TimelineEventKind.DESCRIPTOR, "events")
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
    "supervisor-start",
    "start the supervisor task of a contract",
    'makima supervisor-start "$CONTRACT" --instructions "plan the login page" --empty-worktree',
)
def _supervisor_start(p: argparse.ArgumentParser) -> Run:
    p.add_argument("contract_id", metavar="CONTRACT_ID")
    p.add_argument("--instructions", default="", help="what the supervisor starts from")
    _worktree_options(p)
    _request_id_option(p)
    return lambda c, a: c.start_supervisor(
        **_present(
            contract_id=a.contract_id, instructions=a.instructions, worktree=_worktree(a), request_id=a.request_id
        )
    )


@command(
    "resume",
    "resume an interrupted supervisor",
    'makima resume "$CONTRACT"',
    'makima resume "$CONTRACT" --mode restart_phase',
    'makima resume "$CONTRACT" --mode from_checkpoint --checkpoint "$CHECKPOINT" --rewind-code',
)
def _resume(p: argparse.ArgumentParser) -> Run:
    modes = enum_names(supervisor_pb2.ResumeMode.DESCRIPTOR)
    p.add_argument("contract_id", metavar="CONTRACT_ID")
    p.add_argument(
        "--mode",
        choices=list(modes),
        default="continue",
        help="continue the conversation, restart the phase with a cleared one, or go back to a checkpoint "
        "(default: continue)",
    )
    p.add_argument("--checkpoint", default="", metavar="CHECKPOINT_ID", help="with --mode from_checkpoint")
    p.add_argument("--rewind-code", action="store_true", help="with from_checkpoint: also rewind the worktree")
    _request_id_option(p)
    return lambda c, a: c.resume_supervisor(
        contract_id=a.contract_id,
        mode=modes[a.mode],
        checkpoint_id=a.checkpoint,
        rewind_code=a.rewind_code,
        request_id=a.request_id,
    )


def _conversation_target(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--contract", metavar="CONTRACT_ID", help="the supervisor conversation of this contract")
    target.add_argument("--task", metavar="TASK_ID", help="the conversation of this task")


@command(
    "rewind-conversation",
    "rewind a conversation to a message (what is removed stays in a snapshot)",
    'makima rewind-conversation --contract "$CONTRACT" --by-message-count 2',
    'makima rewind-conversation --task "$TASK" --to-message-index 9 --rewind-code --expected-message-count 14',
)
def _rewind_conversation(p: argparse.ArgumentParser) -> Run:
    _conversation_target(p)
    point = p.add_mutually_exclusive_group()
    point.add_argument("--to-message-index", type=int, metavar="N", help="keep messages 0..N")
    point.add_argument("--by-message-count", type=int, metavar="N", help="remove the last N messages (default: 1)")
    p.add_argument("--rewind-code", action="store_true", help="also rewind the code to the matching checkpoint")
    p.add_argument("--expected-message-count", type=int, metavar="N", help="only if there are N messages, else ABORTED")
    _request_id_option(p)
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
    "restore-conversation",
    "undo a rewind: bring a conversation back from its snapshot",
    'makima restore-conversation "$SNAPSHOT"',
)
def _restore_conversation(p: argparse.ArgumentParser) -> Run:
    p.add_argument("snapshot_id", metavar="SNAPSHOT_ID")
    p.add_argument("--expected-message-count", type=int, metavar="N", help="only if there are N messages, else ABORTED")
    _request_id_option(p)
    return lambda c, a: c.restore_conversation(
        **_present(snapshot_id=a.snapshot_id, expected_message_count=a.expected_message_count, request_id=a.request_id)
    )


@command(
    "conversation",
    "show a supervisor's or a task's conversation, or one of its snapshots",
    'makima conversation --contract "$CONTRACT"',
    'makima conversation --task "$TASK" --snapshot "$SNAPSHOT"',
)
def _conversation(p: argparse.ArgumentParser) -> Run:
    _conversation_target(p)
    p.add_argument("--snapshot", default="", metavar="SNAPSHOT_ID", help="show this snapshot instead")

    def run(c: Client, a: argparse.Namespace) -> Output:
        if a.contract:
            return _all_pages(c.get_supervisor_conversation, "messages", contract_id=a.contract, snapshot_id=a.snapshot)
        return _all_pages(c.get_task_conversation, "messages", task_id=a.task, snapshot_id=a.snapshot)

    return run


# Tasks


@command(
    "task-create",
    "create a task",
    "makima task-create --name 'write tests' --contract \"$CONTRACT\" --instructions 'cover the login form'",
    "makima task-create --name spike --repository repos/app --ref main",
)
def _task_create(p: argparse.ArgumentParser) -> Run:
    p.add_argument("--name", required=True, help="name of the task")
    p.add_argument("--instructions", default="", help="what the agent starts from")
    p.add_argument("--contract", default="", metavar="CONTRACT_ID", help="contract the task belongs to")
    p.add_argument("--parent", default="", metavar="TASK_ID", help="task that spawns this one")
    _worktree_options(p)
    _request_id_option(p)
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


@command("task-get", "show a task", 'makima task-get "$TASK"')
def _task_get(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    return lambda c, a: c.get_task(task_id=a.task_id)


@command(
    "task-history",
    "show a task's conversation and its events (output, tool calls, tool results)",
    'makima task-history "$TASK"',
    'makima --json task-history "$TASK" --kind tool_call --kind tool_result --since 2026-01-15T09:00',
)
def _task_history(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    kinds = _kinds_option(p, resources_pb2.TaskEventKind.DESCRIPTOR, "events")
    _time_options(p)
    return lambda c, a: {
        "conversation": _all_pages(c.get_task_conversation, "messages", task_id=a.task_id),
        "events": _all_pages(
            c.list_task_events, "events", task_id=a.task_id, kinds=[kinds[k] for k in a.kind or ()], **_times(a)
        ),
    }


@command("task-checkpoints", "list a task's checkpoints, newest first", 'makima task-checkpoints "$TASK"')
def _task_checkpoints(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    return lambda c, a: _all_pages(c.list_checkpoints, "checkpoints", task_id=a.task_id)


@command(
    "task-checkpoint",
    "commit a task's worktree and snapshot its conversation",
    "makima task-checkpoint \"$TASK\" --message 'tests pass'",
)
def _task_checkpoint(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--message", default="", help="commit message (default: checkpoint)")
    _request_id_option(p)
    return lambda c, a: c.create_checkpoint(task_id=a.task_id, message=a.message, request_id=a.request_id)


@command(
    "task-snapshots",
    "list a task's conversation snapshots (what rewinds removed), newest first",
    'makima task-snapshots "$TASK"',
)
def _task_snapshots(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    return lambda c, a: _all_pages(c.list_conversation_snapshots, "snapshots", task_id=a.task_id)


@command(
    "task-compare",
    "list the files changed between two checkpoints, or a checkpoint and the live worktree",
    'makima task-compare "$TASK" "$CHECKPOINT"',
    'makima task-compare "$TASK" "$OLD_CHECKPOINT" "$NEW_CHECKPOINT"',
)
def _task_compare(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("base", metavar="BASE_CHECKPOINT_ID")
    p.add_argument("target", nargs="?", default="", metavar="TARGET_CHECKPOINT_ID", help="default: the live worktree")
    return lambda c, a: c.compare_checkpoints(
        task_id=a.task_id, base_checkpoint_id=a.base, target_checkpoint_id=a.target
    )


@command(
    "task-rewind",
    "rewind a task's code, conversation or both to a checkpoint (undoable)",
    'makima task-rewind "$TASK" --checkpoint "$CHECKPOINT"',
    'makima task-rewind "$TASK" --checkpoint "$CHECKPOINT" --mode both',
)
def _task_rewind(p: argparse.ArgumentParser) -> Run:
    modes = enum_names(task_fork_pb2.RewindMode.DESCRIPTOR)
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT_ID", help="checkpoint to rewind to")
    p.add_argument("--mode", choices=list(modes), default="code", help="what to rewind (default: code)")
    _request_id_option(p)
    return lambda c, a: c.rewind_task(
        task_id=a.task_id, checkpoint_id=a.checkpoint, mode=modes[a.mode], request_id=a.request_id
    )


@command("task-resume", "put an interrupted or failed task back to work", 'makima task-resume "$TASK"')
def _task_resume(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    _request_id_option(p)
    return lambda c, a: c.resume_task(task_id=a.task_id, request_id=a.request_id)


@command(
    "task-resume-from",
    "rewind a task to a checkpoint (code and conversation) and put it back to work",
    'makima task-resume-from "$TASK" --checkpoint "$CHECKPOINT"',
)
def _task_resume_from(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT_ID", help="checkpoint to resume from")
    _request_id_option(p)
    return lambda c, a: c.resume_task_from_checkpoint(
        task_id=a.task_id, checkpoint_id=a.checkpoint, request_id=a.request_id
    )


@command(
    "task-branch",
    "create a git branch at a checkpoint",
    'makima task-branch "$TASK" before-refactor --checkpoint "$CHECKPOINT"',
)
def _task_branch(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("branch", metavar="BRANCH", help="branch name, without refs/heads/")
    p.add_argument("--checkpoint", required=True, metavar="CHECKPOINT_ID", help="checkpoint to branch at")
    _request_id_option(p)
    return lambda c, a: c.create_branch(
        task_id=a.task_id, checkpoint_id=a.checkpoint, branch_name=a.branch, request_id=a.request_id
    )


@command(
    "task-fork",
    "fork a new task from a checkpoint or a message of another task",
    'makima task-fork "$TASK" --checkpoint "$CHECKPOINT"',
    'makima task-fork "$TASK" --message-index 12 --name "try another approach"',
)
def _task_fork(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    point = p.add_mutually_exclusive_group(required=True)
    point.add_argument("--checkpoint", metavar="CHECKPOINT_ID", help="fork at this checkpoint")
    point.add_argument("--message-index", type=int, metavar="N", help="fork with messages 0..N")
    p.add_argument("--name", default="", help='name of the new task (default: "<name> (fork)")')
    p.add_argument("--branch", default="", help="branch of the new task (default: makima/<new task id>)")
    _placement_option(p, "the source task's")
    _request_id_option(p)
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
    "task-continue",
    "start a new task from another task's latest state (its worktree as it is now)",
    "makima task-continue \"$TASK\" --instructions 'now add the error messages'",
)
def _task_continue(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--name", default="", help='name of the new task (default: "<name> (continued)")')
    p.add_argument("--instructions", default="", help="what the new task starts from")
    _placement_option(p, "the source task's")
    _request_id_option(p)
    return lambda c, a: c.continue_task(
        **_present(
            task_id=a.task_id,
            name=a.name,
            instructions=a.instructions,
            placement=_placement(a),
            request_id=a.request_id,
        )
    )


@command("task-lineage", "show the fork / continuation / sub-task tree of a task", 'makima task-lineage "$TASK"')
def _task_lineage(p: argparse.ArgumentParser) -> Run:
    p.add_argument("task_id", metavar="TASK_ID")
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
    kinds = _kinds_option(p, resources_pb2.TimelineEventKind.DESCRIPTOR, "events")
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
        follower = c.follow_timeline(
            after_cursor=a.after, keep_alive_seconds=a.keep_alive, retry=FOLLOW_RETRY, **fields
        )
        for count, event in enumerate(follower, 1):
            print(json_line(event) if a.json else event_line(event), flush=True)
            if count == a.limit:
                break
        return None

    return run


def _global_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The connection and output options; a subcommand accepts them too (`makima contract-get ID --json`)
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


def _examples(examples: Sequence[str]) -> str:
    return "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="makima",
        description="Command line of the makima history & resume service.",
        epilog=f"environment:\n"
        f"  {ADDRESS_ENV}   server host:port (default {DEFAULT_ADDRESS})\n"
        f"  {API_KEY_ENV}   API key, sent as `authorization: Bearer <key>`\n"
        f"  {TLS_CA_ENV}, {TLS_CERT_ENV}, {TLS_KEY_ENV}   TLS files, as --tls-ca, --tls-cert, --tls-key\n\n"
        "exit status:\n"
        "  0 success, 2 usage error, 130 interrupted, 64 + the gRPC status code of a failed call\n"
        "  (67 INVALID_ARGUMENT, 69 NOT_FOUND, 73 FAILED_PRECONDITION, 74 ABORTED, 78 UNAVAILABLE,\n"
        "  80 UNAUTHENTICATED)\n\n"
        + _examples(
            [
                "export MAKIMA_API_KEY=mk_...",
                "makima contract-create --name 'login page' --phase plan",
                'makima --json contract-get "$CONTRACT"',
                'makima task-history "$TASK"',
                "makima timeline --follow",
                "makima daemon run --dir work --command ./agent.sh",
                "makima COMMAND --help   # options and examples of one command",
            ]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary, examples, setup in _COMMANDS:
        p = commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=_examples(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _global_options(p, defaults=False)
        p.set_defaults(run=setup(p))
    daemon.add_commands(commands, global_options=lambda p: _global_options(p, defaults=False), examples=_examples)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        tls = Tls.resolve(args.tls_ca, args.tls_cert, args.tls_key)
    except (ValueError, OSError) as err:
        print(f"error: TLS: {err}", file=sys.stderr)
        return USAGE_EXIT
    try:
        if args.command == "daemon":  # a long-running asyncio program: its own client and exit status
            return daemon.run(args, tls)
        with Client(args.address, args.api_key, timeout=args.timeout, tls=tls) as client:
            output = args.run(client, args)
            if output is not None:
                print(to_json(output) if args.json else to_text(output))
    except MakimaError as err:
        print(f"error: {err}", file=sys.stderr)
        return RPC_ERROR_EXIT_BASE + int(err.code.value[0])
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
