"""`makima` end to end: commands, --json, errors and exit codes, help with examples."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path

import pytest

from makima.cli.main import _COMMANDS, build_parser, main
from makima.client import AsyncClient
from makima.server.app import App
from makima.v1 import daemon_pb2, resources_pb2
from tests.cli.conftest import MAKIMA, Makima, run_makima
from tests.client.net import server_without_makima
from tests.helpers import Api, free_port


def listing(out: str) -> dict[str, str]:
    """The `key  value` lines of a human listing, keys indented or not."""
    pairs = (line.strip().split(None, 1) for line in out.splitlines() if line.strip())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


async def test_create_get_advance(makima: Makima) -> None:
    created = await makima("contract-create", "--name", "login page", "--phase", "plan")
    assert created.code == 0, created.err
    contract = listing(created.out)
    assert (contract["name"], contract["phase"], contract["status"]) == ("login page", "plan", "active")

    got = await makima("contract-get", contract["id"])
    advanced = await makima("advance-phase", contract["id"], "execute", "--expected-version", "1")
    assert got.code == advanced.code == 0
    assert listing(got.out)["id"] == contract["id"]
    assert (listing(advanced.out)["previous_phase"], listing(advanced.out)["phase"]) == ("plan", "execute")
    assert listing(advanced.out)["version"] == "2"


async def test_json_output_parses_before_or_after_the_command(makima: Makima) -> None:
    created = await makima("--json", "contract-create", "--name", "scripted")
    contract = json.loads(created.out)["contract"]
    got = await makima("contract-get", contract["id"], "--json")
    task = json.loads((await makima("task-create", "--name", "t", "--contract", contract["id"], "--json")).out)
    assert json.loads(got.out) == {"contract": contract}
    assert contract["supervisor_task_id"] == ""  # every field is there, set or not: stable keys for scripts
    assert contract["status"] == "CONTRACT_STATUS_ACTIVE"
    assert task["task"]["contract_id"] == contract["id"]


async def test_request_id_makes_a_command_safe_to_rerun(makima: Makima) -> None:
    request_id = str(uuid.uuid4())
    first = await makima("--json", "contract-create", "--name", "once", "--request-id", request_id)
    again = await makima("--json", "contract-create", "--name", "once", "--request-id", request_id)
    other = await makima("--json", "contract-create", "--name", "once")
    assert json.loads(first.out) == json.loads(again.out)
    assert json.loads(other.out)["contract"]["id"] != json.loads(first.out)["contract"]["id"]


async def test_task_history_timeline_and_contract_history(makima: Makima, server: App, api: Api) -> None:
    async with AsyncClient(f"127.0.0.1:{server.port}", api.key) as client:
        contract = (await client.create_contract(name="history")).contract
        task = (await client.create_task(name="worker", contract_id=contract.id)).task
        await client.append_messages(
            task_id=task.id,
            expected_next_index=0,
            messages=[
                resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER, content="fix the login"),
                resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content="on it"),
            ],
        )
        await client.record_task_events(
            [
                daemon_pb2.RecordTaskEventsRequest(
                    task_id=task.id,
                    events=[
                        resources_pb2.NewTaskEvent(sequence=1, kind=resources_pb2.TASK_EVENT_KIND_TOOL_CALL, text="ls"),
                        resources_pb2.NewTaskEvent(sequence=2, kind=resources_pb2.TASK_EVENT_KIND_OUTPUT, text="ok"),
                    ],
                )
            ]
        )

    history = await makima("task-history", task.id)
    calls = json.loads((await makima("--json", "task-history", task.id, "--kind", "tool_call")).out)
    timeline = json.loads((await makima("--json", "timeline", "--contract", contract.id)).out)
    limited = json.loads((await makima("--json", "timeline", "--limit", "2")).out)
    phases = await makima("contract-history", contract.id)

    assert history.code == 0, history.err
    assert "#0 user" in history.out and "fix the login" in history.out and "#1 assistant" in history.out
    assert "tool_call" in history.out and "output" in history.out
    assert [m["content"] for m in calls["conversation"]["messages"]] == ["fix the login", "on it"]
    assert [(e["sequence"], e["text"]) for e in calls["events"]["events"]] == [("1", "ls")]
    assert [e["cursor"] for e in timeline["events"]] == ["1", "2", "3", "4"]
    assert [e["kind"] for e in limited["events"]] == [
        "TIMELINE_EVENT_KIND_CONTRACT_CREATED",
        "TIMELINE_EVENT_KIND_TASK_CREATED",
    ]
    assert "research" in phases.out and "task_events_recorded" in phases.out


async def test_timeline_follow_prints_events_as_they_happen(cli_env: dict[str, str], makima: Makima) -> None:
    follow = asyncio.ensure_future(run_makima("--json", "timeline", "--follow", "--limit", "2", env=cli_env))
    human = asyncio.ensure_future(run_makima("timeline", "--follow", "--after", "1", "--limit", "1", env=cli_env))
    await makima("contract-create", "--name", "first")
    await asyncio.sleep(0.5)
    await makima("contract-create", "--name", "second")
    result, plain = await asyncio.wait_for(asyncio.gather(follow, human), 30)
    assert result.code == plain.code == 0, result.err + plain.err
    events = [json.loads(line) for line in result.out.splitlines()]
    assert [(e["cursor"], e["summary"].split("'")[1]) for e in events] == [("1", "first"), ("2", "second")]
    assert plain.out.split()[:2] == ["CURSOR", "TIME"]  # the list view's header and line format
    assert plain.out.splitlines()[1].split()[0] == "2"
    assert "contract_created" in plain.out and "'second'" in plain.out


async def test_task_lineage_is_an_indented_tree(makima: Makima) -> None:
    root = json.loads((await makima("--json", "task-create", "--name", "root")).out)["task"]
    child = json.loads((await makima("--json", "task-create", "--name", "child", "--parent", root["id"])).out)["task"]
    tree = await makima("task-lineage", child["id"], "-o", "wide")
    short = await makima("task", "lineage", child["id"])
    rows = [line.split() for line in tree.out.splitlines()[2:]]
    assert tree.code == 0, tree.err
    assert listing(tree.out)["root_task_id"] == root["id"]
    assert rows == [
        ["TASK", "ID", "RELATION", "STATUS"],
        ["root", root["id"], "root", "pending"],
        ["child", child["id"], "subtask", "pending"],
    ]
    assert "\n    child " in tree.out  # one level deeper than its parent
    assert [line.split()[1] for line in short.out.splitlines()[3:]] == [root["id"][:8], child["id"][:8]]


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (("contract-get", "not-a-uuid"), 64 + 3, "error: INVALID_ARGUMENT: contract_id: "),
        (("contract", "get", str(uuid.uuid4())), 64 + 5, "error: NOT_FOUND: contract "),
    ],
)
async def test_a_failed_call_is_one_line_and_a_distinct_exit_code(
    makima: Makima, args: tuple[str, ...], code: int, line: str
) -> None:
    result = await makima(*args)
    assert result.code == code
    assert result.err.startswith(line)
    assert result.err.count("\n") == 1
    assert result.out == ""


async def test_a_server_without_makima_is_unimplemented(makima: Makima) -> None:
    async with server_without_makima() as port:
        result = await makima("contract-get", str(uuid.uuid4()), "--address", f"127.0.0.1:{port}")
    assert result.code == 64 + 12
    assert result.err.startswith("error: UNIMPLEMENTED: ")


async def test_missing_key_is_unauthenticated(makima: Makima) -> None:
    result = await makima("contract-create", "--name", "x", MAKIMA_API_KEY="")
    assert result.code == 64 + 16
    assert result.err.startswith("error: UNAUTHENTICATED: ")
    assert "hint: no API key was sent: set MAKIMA_API_KEY, pass --api-key" in result.err


async def test_explicit_flags_win_over_the_environment(makima: Makima, server: App, api: Api) -> None:
    flags = ("--address", f"127.0.0.1:{server.port}", "--api-key", api.key)
    result = await makima("contract-create", "--name", "f", *flags, MAKIMA_ADDRESS="127.0.0.1:1", MAKIMA_API_KEY="x")
    assert result.code == 0, result.err


async def test_usage_errors_exit_2(makima: Makima) -> None:
    no_point = await makima("task-fork", str(uuid.uuid4()))
    bad_mode = await makima("resume", str(uuid.uuid4()), "--mode", "sideways")
    bad_time = await makima("timeline", "--since", "yesterday")
    follow_range = await makima("timeline", "--follow", "--since", "2026-01-15")
    assert no_point.code == bad_mode.code == bad_time.code == follow_range.code == 2
    assert "one of the arguments --checkpoint --message-index is required" in no_point.err
    assert "not an ISO 8601 time: 'yesterday'" in bad_time.err
    assert "cannot be combined with --follow" in follow_range.err


async def test_help_lists_every_command_and_every_earlier_name() -> None:
    proc = await asyncio.create_subprocess_exec(MAKIMA, "--help", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    paths = _command_paths()
    assert proc.returncode == 0
    assert {p[0] for p in paths} <= set(out.decode().split())
    assert all(name in out.decode() for name in _earlier_names())
    assert {"task-history", "task-checkpoints", "resume", "task-resume-from", "task-rewind", "task-fork"} <= set(
        _earlier_names()
    )
    assert {"rewind-conversation", "timeline", "contract-history", "conversation", "task-compare"} <= set(
        _earlier_names()
    )
    assert {"task-branch", "task-continue", "task-resume", "contract-create", "contract-get"} <= set(_earlier_names())
    assert {"advance-phase", "task-create", "task-get"} <= set(_earlier_names())
    assert {("task", "rewind"), ("config", "use-context"), ("timeline",), ("daemon", "run")} <= set(paths)


def _subcommands_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(_subcommands_action(parser).choices)


def _command_paths() -> list[tuple[str, ...]]:
    """Every runnable command, noun-verb ("task", "rewind") or one word ("timeline")."""
    paths: list[tuple[str, ...]] = []
    top = _subcommands(build_parser())
    listed = {a.dest for a in _subcommands_action(build_parser())._choices_actions}
    for name, parser in top.items():
        if name not in listed:
            continue
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            paths.extend((name, verb) for verb in _subcommands(parser))
        else:
            paths.append((name,))
    return paths


def _earlier_names() -> list[str]:
    """The flat command names of before the noun-verb grouping, all still accepted."""
    return [c.alias for c in _COMMANDS if c.alias] + ["timeline"]


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "example" in out
    name = " ".join(path)
    assert f"  makima {name} " in out or f"  makima --json {name} " in out


@pytest.mark.parametrize("name", _earlier_names())
def test_every_earlier_name_runs_its_command(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "example" in out


async def test_contract_and_task_lists_with_filters(makima: Makima, server: App, api: Api) -> None:
    contract = json.loads((await makima("--json", "contract", "create", "--name", "listed")).out)["contract"]
    inside = json.loads((await makima("--json", "task-create", "--name", "in", "--contract", contract["id"])).out)
    outside = json.loads((await makima("--json", "task", "create", "--name", "out")).out)
    async with AsyncClient(f"127.0.0.1:{server.port}", api.key) as client:
        daemon = (await client.register_daemon(name="d")).daemon
        running = (await client.claim_task(daemon_id=daemon.id)).claimed.task

    contracts = await makima("contract-list", "-o", "wide")
    tasks = json.loads((await makima("task", "list", "-o", "json")).out)
    of_contract = json.loads((await makima("--json", "task", "list", "--contract", contract["id"][:8])).out)
    pending = json.loads((await makima("--json", "task-list", "--status", "pending")).out)
    bad_status = await makima("task", "list", "--status", "runing")

    assert contracts.code == 0, contracts.err
    assert contracts.out.splitlines()[1].split() == ["ID", "NAME", "PHASE", "STATUS", "CREATED"]
    assert contracts.out.splitlines()[2].split()[:4] == [contract["id"], "listed", "research", "active"]
    assert [t["id"] for t in tasks["tasks"]] == [outside["task"]["id"], inside["task"]["id"]]  # newest first
    assert [t["id"] for t in of_contract["tasks"]] == [inside["task"]["id"]]
    assert running.id == inside["task"]["id"]  # the oldest pending task
    assert [t["id"] for t in pending["tasks"]] == [outside["task"]["id"]]
    assert bad_status.code == 2 and "did you mean running?" in bad_status.err


async def test_ids_are_taken_and_shown_as_unique_prefixes(makima: Makima) -> None:
    # 17 tasks: two of them must share their first hex digit, so that one-digit prefix is ambiguous.
    ids = [json.loads((await makima("--json", "task-create", "--name", f"t{i}")).out)["task"]["id"] for i in range(17)]
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    unique = next(i for i in ids if sum(j[:8] == i[:8] for j in ids) == 1)

    got = json.loads((await makima("--json", "task", "get", unique[:8])).out)
    ambiguous = await makima("task", "get", shared)
    unknown = await makima("task-get", "0" if not any(i.startswith("0") for i in ids) else "fffffffff")
    listed = await makima("task", "list")

    assert got["task"]["id"] == unique
    assert ambiguous.code == 2
    assert f"task id prefix {shared!r} is ambiguous: it starts " in ambiguous.err
    assert all(i in ambiguous.err for i in ids if i.startswith(shared))  # every candidate, in full
    assert unknown.code == 64 + 5 and unknown.err.startswith("error: NOT_FOUND: no task id starts with ")
    shown = [line.split()[0] for line in listed.out.splitlines()[2:]]
    assert len(set(shown)) == 17 and all(len(s) >= 8 and any(i.startswith(s) for i in ids) for s in shown)


async def test_json_errors_version_and_did_you_mean(makima: Makima) -> None:
    missing = await makima("--json", "contract", "get", str(uuid.uuid4()))
    mistyped = await makima("task-histroy", "x")
    version = await makima("--version")

    error = json.loads(missing.err)["error"]
    assert missing.code == 64 + 5 and missing.out == ""
    assert (error["code"], error["status"], error["reason"]) == ("NOT_FOUND", 5, "NOT_FOUND")
    assert error["message"].startswith("contract ")
    assert mistyped.code == 2 and "unknown command 'task-histroy'; did you mean task-history?" in mistyped.err
    assert version.code == 0 and version.out.startswith("makima 0.")


async def test_follow_fails_fast_when_it_cannot_connect(makima: Makima) -> None:
    result = await makima("timeline", "--follow", "--address", f"127.0.0.1:{free_port()}")
    assert result.code == 64 + 14
    assert "error: UNAVAILABLE: " in result.err


async def test_contexts_and_their_precedence(makima: Makima, cli_env: dict[str, str], server: App, api: Api) -> None:
    address = f"127.0.0.1:{server.port}"
    saved = await makima("config", "set-context", "here", "--address", address, "--api-key", api.key)
    other = await makima("config", "set-context", "nowhere", "--address", f"127.0.0.1:{free_port()}", "--use")
    no_env = {"MAKIMA_ADDRESS": "", "MAKIMA_API_KEY": ""}
    listed = json.loads((await makima("--json", "config", "get-contexts")).out)
    through_nowhere = await makima("contract", "create", "--name", "x", MAKIMA_ADDRESS="")
    through_flag = await makima("--context", "here", "contract", "create", "--name", "x", MAKIMA_ADDRESS="")
    used = await makima("config", "use-context", "here")
    through_current = await makima("contract", "create", "--name", "x", **no_env)
    env_wins = await makima("contract", "create", "--name", "x", MAKIMA_API_KEY="wrong")
    unknown = await makima("config", "use-context", "elsewhere")
    config = Path(cli_env["XDG_CONFIG_HOME"]) / "makima" / "config.toml"

    assert saved.code == other.code == used.code == 0, saved.err + other.err
    assert [(c["name"], c["current"], c["api_key_set"]) for c in listed["contexts"]] == [
        ("here", False, True),
        ("nowhere", True, False),
    ]
    assert api.key not in json.dumps(listed)  # keys are never printed back
    assert through_nowhere.code == 64 + 14  # the current context's address, the env key
    assert through_flag.code == 0, through_flag.err
    assert through_current.code == 0, through_current.err  # address and key from the context alone
    assert env_wins.code == 64 + 16  # the environment's key beats the context's
    assert unknown.code == 2 and "no context 'elsewhere' (known: here, nowhere)" in unknown.err
    assert config.stat().st_mode & 0o777 == 0o600
