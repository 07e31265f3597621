"""What the benchmarks share: a `makima-server serve` process, a temporary PostgreSQL database, the
source-like files of the code benchmarks, and the timing and printing of medians."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

import asyncpg
from grpc import aio

SERVER = str(Path(sys.executable).parent / "makima-server")
FILES, CHANGED = 1000, 100
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dsn(url: str) -> str:
    """The asyncpg form of a SQLAlchemy PostgreSQL URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def git_identity(base: Path) -> None:
    """git runs with an identity and configuration of its own (a home under `base`): the machine's never count."""
    home = base / "home"
    home.mkdir()
    os.environ.update(
        HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
        GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost",
    )  # fmt: skip


async def served(url: str) -> tuple[asyncio.subprocess.Process, str, str]:
    """`makima-server serve` on `url` in its own process, so that its CPU time is its own: the process,
    its address and an API key. The caller terminates it."""
    address = f"127.0.0.1:{free_port()}"
    env = os.environ | {
        "MAKIMA_DATABASE_URL": url,
        "MAKIMA_LISTEN": address,
        "MAKIMA_LOG_LEVEL": "WARNING",
        "MAKIMA_WORKSPACE_ROOT": tempfile.mkdtemp(),
    }
    secret = await new_api_key(env)
    proc = await asyncio.create_subprocess_exec(SERVER, "serve", env=env)
    return proc, address, secret


async def new_api_key(env: dict[str, str]) -> str:
    """An API key for a new owner, made by `makima-server create-api-key` on the database `env` names."""
    made = await asyncio.create_subprocess_exec(
        SERVER,
        "create-api-key",
        "--owner",
        str(uuid.uuid4()),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return (await made.communicate())[0].decode().strip()


@asynccontextmanager
async def serving(database_url: str, workspace: Path) -> AsyncIterator[tuple[str, str]]:
    """A `makima-server serve` process on `database_url`; yields its address and an API key."""
    port = free_port()
    env = os.environ | {
        "MAKIMA_LISTEN": f"127.0.0.1:{port}",
        "MAKIMA_DATABASE_URL": database_url,
        "MAKIMA_WORKSPACE_ROOT": str(workspace),
    }
    key = await new_api_key(env)
    with (workspace.parent / f"{workspace.name}.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(SERVER, "serve", env=env, stdout=log, stderr=log)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
        yield f"127.0.0.1:{port}", key
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


@contextmanager
def postgres_database(url: str) -> Iterator[str]:
    """A temporary database beside the one `url` names, dropped afterwards."""
    name = f"makima_bench_{uuid.uuid4().hex[:12]}"
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def write_files(root: Path, salt: int) -> list[Path]:
    """1,000 source-like files of 200 B to 8 KB in 40 directories, every 50th executable."""
    rng = random.Random(7)
    paths = []
    for i in range(FILES):
        path = root / f"pkg{i % 8}" / f"mod{i % 5}" / f"file_{i:04}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = f"def function_{i}(x):  # {'x' * rng.randrange(10, 60)}\n    return x * {i}\n"
        path.write_text(f"# run {salt}\n" + body * rng.randrange(3, 90))
        if i % 50 == 0:
            path.chmod(0o755)
        paths.append(path)
    (root / ".gitignore").write_text("__pycache__/\n*.log\n")
    return paths


def change_files(root: Path, *, mark: str = "# changed\n") -> None:
    """Append `mark` to 100 of the files, the same ones on both sides."""
    for i in random.Random(11).sample(range(FILES), CHANGED):
        with (root / f"pkg{i % 8}" / f"mod{i % 5}" / f"file_{i:04}.py").open("a") as f:
            f.write(mark)


def line(label: str, ours: list[float], theirs: list[float]) -> None:
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label:<60} ours {a:8.1f} ms   git {b:8.1f} ms   ours/git {a / b:5.2f}")


def timed(action: Callable[[], T], into: list[float]) -> T:
    start = time.perf_counter()
    result = action()
    into.append((time.perf_counter() - start) * 1000)
    return result


async def timed_async(action: Awaitable[T], into: list[float]) -> T:
    start = time.perf_counter()
    result = await action
    into.append((time.perf_counter() - start) * 1000)
    return result


def postgres_argument(parser: argparse.ArgumentParser) -> None:
    """--postgres URL: a server to bench on too (a temporary database there); default from the environment."""
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MAKIMA_BENCH_POSTGRES_URL") or os.environ.get("MAKIMA_TEST_POSTGRES_URL", ""),
    )


@contextmanager
def backends(base: Path, postgres: str) -> Iterator[list[tuple[str, str]]]:
    """The databases to bench, as (name, URL): SQLite under `base`, then a temporary PostgreSQL database
    when `postgres` names a server; each gets its directory `base/<name>`. git runs with an identity
    and configuration of its own, so the machine's never count."""
    git_identity(base)
    with postgres_database(postgres) if postgres else nullcontext("") as pg_url:
        found = [("sqlite", f"sqlite+aiosqlite:///{base / 'sqlite' / 'makima.db'}")]
        if pg_url:
            found.append(("postgresql", pg_url))
        for name, _url in found:
            (base / name).mkdir()
        yield found
