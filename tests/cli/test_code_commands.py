"""`makima` on a task with a git worktree: checkpoints, compare, rewind, branch, fork, continue, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cli.conftest import Makima


async def run_json(makima: Makima, *args: str) -> Any:
    result = await makima("--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


async def test_checkpoint_compare_and_rewind(makima: Makima) -> None:
    task = (await run_json(makima, "task-create", "--name", "coder", "--empty-worktree"))["task"]
    worktree = Path(task["worktree_path"])
    (worktree / "app.py").write_text("print('v1')\n")
    first = (await run_json(makima, "task-checkpoint", task["id"], "--message", "v1"))["checkpoint"]
    (worktree / "app.py").write_text("print('v2')\n")
    (worktree / "extra.py").write_text("x = 1\n")
    second = (await run_json(makima, "task-checkpoint", task["id"], "--message", "v2"))["checkpoint"]

    listed = await makima("task-checkpoints", task["id"], "-o", "wide")
    compared = await makima("task-compare", task["id"], first["id"], second["id"])
    rewound = await run_json(makima, "task-rewind", task["id"], "--checkpoint", first["id"], "--mode", "both")
    snapshots = await run_json(makima, "task-snapshots", task["id"])

    rows = [line.split()[0] for line in listed.out.splitlines()[2:]]
    assert rows[:2] == [second["id"], first["id"]]  # newest first
    assert [line.split() for line in compared.out.splitlines() if line.strip().startswith(("added", "modified"))] == [
        ["modified", "app.py"],
        ["added", "extra.py"],
    ]  # sorted by path
    assert rewound["code_rewound"] and rewound["conversation_rewound"]
    # The worktree had not changed since v2: its checkpoint is the safety one.
    assert rewound["safety_checkpoint"]["id"] == second["id"]
    assert (worktree / "app.py").read_text() == "print('v1')\n"
    assert not (worktree / "extra.py").exists()
    assert rewound["conversation_snapshot"]["id"] in {s["id"] for s in snapshots["snapshots"]}


async def test_branch_fork_continue_and_resume(makima: Makima) -> None:
    task = (await run_json(makima, "task-create", "--name", "source", "--empty-worktree"))["task"]
    (Path(task["worktree_path"]) / "README").write_text("hello\n")
    checkpoint = (await run_json(makima, "task-checkpoint", task["id"]))["checkpoint"]

    branch = await run_json(makima, "task-branch", task["id"], "before-refactor", "--checkpoint", checkpoint["id"])
    fork = await run_json(makima, "task-fork", task["id"], "--checkpoint", checkpoint["id"], "--name", "try b")
    continued = await run_json(makima, "task-continue", task["id"], "--instructions", "go on")
    resumed = await run_json(makima, "task-resume-from", task["id"], "--checkpoint", checkpoint["id"])
    not_resumable = await makima("task-resume", task["id"])

    assert branch == {"ref": "refs/heads/before-refactor", "commit_sha": checkpoint["commit_sha"]}
    assert (fork["task"]["name"], fork["task"]["forked_from_task_id"]) == ("try b", task["id"])
    assert fork["commit_sha"] == checkpoint["commit_sha"]
    assert (Path(fork["task"]["worktree_path"]) / "README").read_text() == "hello\n"
    assert continued["task"]["continued_from_task_id"] == task["id"]
    assert continued["task"]["instructions"] == "go on"
    assert resumed["resumed_from"]["checkpoint_id"] == checkpoint["id"]
    assert resumed["task"]["status"] == "TASK_STATUS_PENDING"
    assert not_resumable.code == 64 + 9  # FAILED_PRECONDITION: a pending task is not interrupted
    assert not_resumable.err.startswith("error: FAILED_PRECONDITION NOT_RESUMABLE: ")  # the reason says more
