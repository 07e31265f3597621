"""The README's "Using it" examples, run as they stand against a real server."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from makima.server.app import App
from tests.test_server import run

DEFAULT_ADDRESS = "127.0.0.1:50051"


def blocks(repo_root: Path, language: str) -> list[str]:
    """The fenced blocks of one language in the README's "Using it" section."""
    text = (repo_root / "README.md").read_text()
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def environment(server: App, database_url: str) -> dict[str, str]:
    """Point the examples at the test server: its address, and its database for create-api-key."""
    env = dict(os.environ)
    env.pop("MAKIMA_API_KEY", None)
    return env | {"MAKIMA_ADDRESS": f"127.0.0.1:{server.port}", "MAKIMA_DATABASE_URL": database_url}


@pytest.mark.timeout(320)
async def test_cli_daemon_and_grpcurl_examples_run(server: App, database_url: str, repo_root: Path) -> None:
    """The daemon's block continues the CLI's session, as a second terminal would."""
    cli, grpcurl, daemon, remote = blocks(repo_root, "sh")
    script = (
        "set -euo pipefail\n" + cli + daemon + remote + grpcurl.replace(DEFAULT_ADDRESS, f"127.0.0.1:{server.port}")
    )
    # A walkthrough of some 40 commands, each a fresh Python process: minutes on a loaded machine.
    code, out, err = await run("bash", "-c", script, env=environment(server, database_url), cwd=repo_root, seconds=300)
    assert code == 0, f"{out}\n{err}"
    assert re.search(r"^\s*status\s+interrupted$", out, flags=re.M)  # the supervisor, before its resume
    assert "resumed (continue)" in out  # contract-history shows the supervisor resumed
    assert "first form" in out  # task-checkpoints listed the checkpoint
    assert "form.html" in out  # task-compare saw the change
    assert "claimed task" in err and "(write the form)" in err  # the daemon's steps
    assert "wrote form.html" in out  # what the daemon's command printed is the task's history
    assert "command exited with code 0" in out  # the checkpoint the daemon made when it exited
    assert re.search(r"^\s*status\s+completed$", out, flags=re.M)  # task-get after the daemon's report
    assert "(write the tests)" in err  # the daemon-held task ran on the daemon
    assert "(tests, take two)" in err  # the fork was claimed
    assert "assert form.html" in out  # ...and its worktree held the tree the first daemon pushed
    assert '"name": "from grpcurl"' in out


async def test_python_example_runs(server: App, database_url: str, repo_root: Path) -> None:
    (example,) = blocks(repo_root, "python")
    env = environment(server, database_url)
    bin_dir = Path(sys.executable).parent
    code, key, err = await run(
        str(bin_dir / "makima-server"), "create-api-key", "--owner", "6f0f6a8e-3b1e-4c56-9a7e-0d5c2b3f9a11", env=env
    )
    assert code == 0, err
    code, out, err = await run(sys.executable, "-c", example, env=env | {"MAKIMA_API_KEY": key.strip()})
    assert code == 0, err
    assert "contract 'login page' created in phase 'research'" in out
