"""`makima` in a real pseudo-terminal (pexpect): widths, Ctrl-C, a closed pipe, completion, the progress
spinner, and a follower that reconnects. pexpect blocks, so it runs in a thread while the in-process
server keeps serving on the event loop."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from pexpect import fdpexpect

from makima.server.app import App
from tests.cli.conftest import MAKIMA
from tests.client.net import start_server
from tests.helpers import Api, create_contract, free_port

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminal:
    """One program in a pseudo-terminal of `columns` columns, which is its controlling terminal (so
    Ctrl-C works as in a shell).

    Started with subprocess (vfork and exec) rather than pexpect.spawn: a fork() of this process,
    whose gRPC threads are busy serving, can leave the child's copy of gRPC broken before it execs."""

    def __init__(self, program: str, args: list[str], env: dict[str, str], *, columns: int = 80) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        self.process = subprocess.Popen(
            ["setsid", "--ctty", program, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.child = fdpexpect.fdspawn(master, encoding="utf-8", timeout=30, codec_errors="replace")
        self.seen = ""

    async def expect(self, pattern: Any) -> str:
        """Wait for `pattern`; returns what came before it and the match (all of it kept in `seen`)."""
        await asyncio.to_thread(self.child.expect, pattern)
        before = str(self.child.before) + (self.child.after if isinstance(self.child.after, str) else "")
        self.seen += before
        return before

    def send(self, text: str) -> None:
        os.write(self.child.child_fd, text.encode())

    def interrupt(self) -> None:
        """Ctrl-C, typed into the terminal."""
        self.send("\x03")

    async def finish(self) -> int:
        """Wait for the program to end; its exit status."""
        await self.expect(pexpect.EOF)
        status = await asyncio.to_thread(self.process.wait, 30)
        self.child.close()
        return status

    def lines(self) -> list[str]:
        return [ANSI.sub("", line) for line in self.seen.replace("\r\n", "\n").split("\n") if line.strip()]


@pytest.fixture
def tty_env(cli_env: dict[str, str]) -> dict[str, str]:
    """The test user's environment without COLUMNS: the terminal's own size decides."""
    return {k: v for k, v in cli_env.items() if k not in {"COLUMNS", "LINES"}}


@pytest.mark.parametrize("columns", [80, 120])
async def test_timeline_fits_the_terminal(api: Api, tty_env: dict[str, str], columns: int) -> None:
    for _ in range(3):
        await create_contract(api, "a contract whose name is much longer than any terminal is wide " * 3)
    narrow = Terminal(MAKIMA, ["timeline"], tty_env, columns=columns)
    assert await narrow.finish() == 0
    wide = Terminal(MAKIMA, ["timeline", "-o", "wide"], tty_env, columns=columns)
    assert await wide.finish() == 0

    rows = narrow.lines()
    assert rows[1].split()[:3] == ["CURSOR", "TIME", "KIND"]
    assert max(len(line) for line in rows) == columns  # fills the width, and no more
    assert all(line.endswith("\u2026") for line in rows[2:])  # summaries cut, and marked as cut
    # -o wide: full ids, summaries whole (the terminal wraps them)
    assert ("a contract whose name is much longer than any terminal is wide " * 3).strip() in wide.seen


async def test_ctrl_c_ends_a_follower_quietly_with_130(api: Api, tty_env: dict[str, str]) -> None:
    await create_contract(api, "before")
    follower = Terminal(MAKIMA, ["timeline", "--follow"], tty_env, columns=160)
    await follower.expect("contract 'before' created")
    follower.interrupt()
    assert await follower.finish() == 130
    assert "Traceback" not in follower.seen and "KeyboardInterrupt" not in follower.seen


async def test_a_closed_pipe_ends_a_follower_silently(api: Api, tty_env: dict[str, str]) -> None:
    await create_contract(api, "first")
    pipeline = Terminal(
        "bash",
        ["-c", f'{MAKIMA} --json timeline --follow | head -1; echo "makima exited with ${{PIPESTATUS[0]}}"'],
        tty_env,
    )
    first = await pipeline.expect(r"\}\r\n")
    # makima notices that head is gone at its next write: keep the timeline moving until it exits.
    for i in range(50):
        await create_contract(api, f"more {i}")
        index = await asyncio.to_thread(pipeline.child.expect, ["makima exited with", pexpect.TIMEOUT], 0.2)
        if index == 0:
            break
    await pipeline.expect(r"\d+")
    status = pipeline.child.after
    assert await pipeline.finish() == 0
    assert json.loads(first.strip())["summary"] == "contract 'first' created in phase 'research'"
    assert status == "141"  # 128 + SIGPIPE, as a shell reports a writer whose reader went away
    assert "Traceback" not in pipeline.seen and "BrokenPipe" not in pipeline.seen and "Exception" not in pipeline.seen


async def test_bash_completes_commands_verbs_and_choices(tty_env: dict[str, str]) -> None:
    shell = Terminal("bash", ["--norc", "--noprofile", "-i"], {**tty_env, "PS1": "$ "}, columns=200)
    shell.send(f'eval "$({MAKIMA} completion bash)"; alias makima={MAKIMA}; complete -F _makima makima\n')
    await shell.expect(r"\$ ")
    shell.send("makima ta\t")
    await shell.expect("makima task ")
    shell.send("rew\t")
    await shell.expect("rewind ")
    shell.send("x --mo\t")
    await shell.expect("--mode ")
    shell.send("\t\t")
    listed = await shell.expect("conversation")  # the choices of --mode, in order
    assert "both" in listed and "code" in listed
    shell.process.kill()
    await shell.finish()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("makima config use", "use-context"),
        ("makima --json task", "task"),
        ("makima task-rewind ID --mo", "--mode"),  # an earlier name completes its options
        ("makima supervisor resume ID --mode r", "restart_phase"),
        ("makima timeline --kind task_st", "task_status_changed"),
    ],
)
def test_the_bash_completion_function_follows_the_command_tree(words: str, expected: str) -> None:
    script = f'eval "$({MAKIMA} completion bash)"; COMP_WORDS=({words}); COMP_CWORD={len(words.split()) - 1}; '
    script += '_makima; echo "${COMPREPLY[*]}"'
    completed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == [expected]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
async def test_zsh_completes_through_bashcompinit(tty_env: dict[str, str]) -> None:
    env = {**tty_env, "PS1": "$ ", "PATH": f"{Path(MAKIMA).parent}:{tty_env['PATH']}"}
    shell = Terminal("zsh", ["-f", "-i"], env, columns=200)
    shell.send('autoload -U compinit && compinit -u; eval "$(makima completion zsh)"\n')
    shell.send("makima ta\t")
    await shell.expect("task")
    shell.send("rew\t")
    await shell.expect("rewind")
    shell.send("x --mo\t")
    await shell.expect("--mode")
    shell.process.kill()
    await shell.finish()


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_commands_verbs_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "makima.fish"
    script.write_text(subprocess.run([MAKIMA, "completion", "fish"], capture_output=True, text=True, check=True).stdout)

    def complete(line: str) -> list[str]:
        done = subprocess.run(
            ["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"],
            capture_output=True,
            text=True,
            check=True,
        )
        return [row.split("\t")[0] for row in done.stdout.splitlines()]

    assert complete("makima ta") == ["task"]
    assert complete("makima task rew") == ["rewind"]
    assert complete("makima task rewind x --mode ") == ["both", "code", "conversation"]
    assert complete("makima config use") == ["use-context"]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers, like a server that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


async def test_a_slow_call_shows_progress_then_suggests_timeout(tty_env: dict[str, str], silent_port: int) -> None:
    call = Terminal(
        MAKIMA,
        [
            "--address",
            f"127.0.0.1:{silent_port}",
            "--timeout",
            "3",
            "contract",
            "get",
            "00000000-0000-0000-0000-000000000000",
        ],
        tty_env,
    )
    await call.expect("waiting for the server")
    assert await call.finish() == 64 + 4
    assert "error: DEADLINE_EXCEEDED: " in call.seen
    assert "hint: the call took longer than --timeout 3 s; give it more with --timeout SECONDS" in call.seen


async def test_a_follower_says_when_it_reconnects(
    api: Api, server: App, database_url: str, tmp_path: Path, tty_env: dict[str, str]
) -> None:
    port = free_port()
    replica = await start_server(database_url, port, tmp_path)
    follower = Terminal(MAKIMA, ["timeline", "--follow", "--address", f"127.0.0.1:{port}"], tty_env, columns=160)
    try:
        await create_contract(api, "one")
        await follower.expect("contract 'one' created")
        await replica.stop(0.5)
        await follower.expect("reconnecting after cursor 1")
        await create_contract(api, "two")
        replica = await start_server(database_url, port, tmp_path)
        await follower.expect("contract 'two' created")
        follower.interrupt()
        assert await follower.finish() == 130
    finally:
        await replica.stop(0.5)
    events = [line for line in follower.lines() if "created" in line]
    assert [line.split()[0] for line in events] == ["1", "2"]  # no gap, no repeat
