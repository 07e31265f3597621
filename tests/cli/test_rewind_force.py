"""`makima` on issue 12's additions: the INITIAL and REWIND checkpoint kinds, and `task-rewind --force`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.cli.conftest import Makima

FAILED_PRECONDITION_EXIT = 64 + 9


def nested_repository(path: Path) -> None:
    path.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@l", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@l"
    (path / "code.py").write_text("x\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "nested"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)


async def test_checkpoint_kinds_render_and_a_blocked_rewind_needs_force(makima: Makima) -> None:
    created = await makima("--json", "task-create", "--name", "coder", "--empty-worktree")
    task = json.loads(created.out)["task"]
    worktree = Path(task["worktree_path"])
    (worktree / "lib").write_text("a file in the target\n")
    target = json.loads((await makima("--json", "task-checkpoint", task["id"])).out)["checkpoint"]
    (worktree / "lib").unlink()
    nested_repository(worktree / "lib")
    await makima("task-checkpoint", task["id"])

    refused = await makima("task-rewind", task["id"], "--checkpoint", target["id"])
    (worktree / "notes.txt").write_text("not checkpointed: the rewind keeps it in a SAFETY checkpoint\n")
    forced = await makima("task-rewind", task["id"], "--checkpoint", target["id"], "--force")
    listed = await makima("task-checkpoints", task["id"])

    assert refused.code == FAILED_PRECONDITION_EXIT and "UNTRACKED_IN_THE_WAY" in refused.err and "'lib'" in refused.err
    assert forced.code == 0, forced.err
    assert (worktree / "lib").read_text() == "a file in the target\n"
    _title, header, *rows = listed.out.splitlines()
    column = header.index("KIND")
    kinds = [row[column:].split()[0] for row in rows]
    assert kinds[-1] == "initial" and "rewind" in kinds and "safety" in kinds  # newest first
