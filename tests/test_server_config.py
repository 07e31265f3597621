"""`makima-server` refuses to be misconfigured (issue 10, part 5), run as a real process.

A port is shared only by the workers of one `serve`; every setting that cannot work ends the
command with exit code 2 (a bad value) or 1 (a value the machine refuses) and one line on stderr
naming the flag or MAKIMA_* variable, with no traceback and nothing started or created.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from grpc import aio

from makima.server.cli import COMMAND_OPTIONS
from makima.server.config import Address, parse_listen
from makima.server.store.engine import DatabaseUrlError, normalize_database_url
from tests.helpers import Api, create_contract, free_port

SERVER = str(Path(sys.executable).parent / "makima-server")
OWNER = "4f1c2e1a-0000-4000-8000-000000000001"


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any MAKIMA_* setting, plus `settings`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAKIMA_")} | settings


async def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        SERVER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env or clean_env(), cwd=cwd
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()  # a server that should have refused to start must not outlive the test
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def serving(*args: str, port: int, env: dict[str, str], cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`makima-server serve <args>` answering on `port` until the block ends (then SIGTERM)."""
    proc = await asyncio.create_subprocess_exec(
        SERVER, "serve", *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]


def assert_one_line(err: str, label: str, *fragments: str) -> None:
    """stderr is exactly one line, `makima-server: <label>: …` holding every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"makima-server: {label}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


async def new_key(database_url: str, cwd: Path) -> str:
    code, out, err = await run("create-api-key", "--owner", str(uuid.uuid4()), "--database-url", database_url, cwd=cwd)
    assert code == 0, err
    return out.strip()


async def calls_all_reach(port: int, key: str, count: int) -> None:
    """`count` calls on fresh connections all find the owner of `key` (a second database would not know it)."""
    for i in range(count):
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = Api(channel=channel, owner_id=uuid.uuid4(), key=key)
            assert (await create_contract(api, f"c{i}")).name == f"c{i}"


# -- one port, one server ---------------------------------------------------------------------------


async def test_a_second_serve_on_a_taken_port_fails_and_the_first_keeps_its_database(
    empty_database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    key = await new_key(empty_database_url, tmp_path)
    env = clean_env(MAKIMA_LISTEN=f"127.0.0.1:{port}", MAKIMA_WORKSPACE_ROOT=str(tmp_path / "ws"))
    other_db = tmp_path / "other.db"

    async with serving("--database-url", empty_database_url, port=port, env=env, cwd=tmp_path):
        code, _, err = await asyncio.wait_for(
            run("serve", "--workers", "1", "--database-url", f"sqlite+aiosqlite:///{other_db}", env=env, cwd=tmp_path),
            30,
        )
        assert code == 1
        assert_one_line(err, "MAKIMA_LISTEN", f"127.0.0.1:{port}", "address already in use")
        await calls_all_reach(port, key, 10)
    assert not other_db.exists()  # the second server stopped before opening its database


async def test_a_port_held_by_another_program_is_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, _, err = await run("serve", "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert code == 1
    assert_one_line(err, "--listen", "address already in use")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgresql_only
async def test_workers_share_their_port_with_no_other_serve(empty_database_url: str, tmp_path: Path) -> None:
    """Two `serve --workers 2` on one port: the second fails; a plain serve fails against them too."""
    port = free_port()
    key = await new_key(empty_database_url, tmp_path)
    env = clean_env(MAKIMA_DATABASE_URL=empty_database_url, MAKIMA_WORKSPACE_ROOT=str(tmp_path / "ws"))
    listen = f"127.0.0.1:{port}"

    async with serving("--workers", "2", "--listen", listen, port=port, env=env, cwd=tmp_path):
        for workers in ("2", "1"):
            code, _, err = await run("serve", "--workers", workers, "--listen", listen, env=env, cwd=tmp_path)
            assert code == 1, err
            assert_one_line(err, "--listen", "address already in use")
        await calls_all_reach(port, key, 5)


async def test_workers_cannot_join_a_port_a_plain_serve_holds(empty_database_url: str, tmp_path: Path) -> None:
    if not empty_database_url.startswith("postgresql"):
        pytest.skip("--workers needs PostgreSQL")
    port = free_port()
    env = clean_env(MAKIMA_DATABASE_URL=empty_database_url, MAKIMA_WORKSPACE_ROOT=str(tmp_path / "ws"))
    listen = f"127.0.0.1:{port}"
    async with serving("--listen", listen, port=port, env=env, cwd=tmp_path):
        code, _, err = await run("serve", "--workers", "2", "--listen", listen, env=env, cwd=tmp_path)
    assert code == 1
    assert_one_line(err, "--listen", "address already in use")


# -- every bad setting: one line naming it, the right exit code, nothing created -----------------

BAD_VALUES = [
    # (arguments, environment, exit code, label, fragments of the message)
    (["--log-level", "LOUD", "serve"], {}, 2, "--log-level", ["LOUD"]),
    (["serve"], {"MAKIMA_LOG_LEVEL": "chatty"}, 2, "MAKIMA_LOG_LEVEL", ["chatty"]),
    (["serve", "--listen", "localhost"], {}, 2, "--listen", ["port is missing"]),
    (["serve", "--listen", "127.0.0.1:99999"], {}, 2, "--listen", ["0 to 65535", "99999"]),
    (["serve", "--listen", "127.0.0.1:-1"], {}, 2, "--listen", ["0 to 65535"]),
    (["serve", "--listen", "::1:50051"], {}, 2, "--listen", ["[::1]:50051"]),
    (["serve", "--listen", "[::1]"], {}, 2, "--listen", ["[IPv6 address]:port"]),
    (["serve", "--listen", "[nope]:1"], {}, 2, "--listen", ["not an IPv6 address"]),
    (["serve", "--listen", "bad_host!:50051"], {}, 2, "--listen", ["host name"]),
    (["serve", "--listen", "300.1.1.1:50051"], {}, 2, "--listen", ["IPv4"]),
    (["serve"], {"MAKIMA_LISTEN": "localhost"}, 2, "MAKIMA_LISTEN", ["port is missing"]),
    (["serve", "--workers", "abc"], {}, 2, "--workers", ["whole number", "abc"]),
    (["serve"], {"MAKIMA_WORKERS": "abc"}, 2, "MAKIMA_WORKERS", ["whole number", "abc"]),
    (["serve", "--workers", "0"], {}, 2, "--workers", ["at least 1"]),
    (["serve"], {"MAKIMA_SHUTDOWN_GRACE": "-1"}, 2, "MAKIMA_SHUTDOWN_GRACE", ["more than 0", "-1"]),
    (["serve", "--sweep-seconds", "nan"], {}, 2, "--sweep-seconds", ["more than 0"]),
    (["serve"], {"MAKIMA_LEASE_SECONDS": "soon"}, 2, "MAKIMA_LEASE_SECONDS", ["number of seconds"]),
    (["serve", "--keep-alive-seconds", "inf"], {}, 2, "--keep-alive-seconds", ["more than 0"]),
    (["serve", "--database-url", "sqlite:///x.db", "--workers", "2"], {}, 2, "--workers", ["PostgreSQL"]),
    (
        ["serve", "--listen", "127.0.0.1:0", "--workers", "2"],
        {"MAKIMA_DATABASE_URL": "postgresql://u@h/db"},
        2,
        "--workers",
        ["fixed port"],
    ),
    (["create-api-key", "--owner", "no pe"], {}, 2, "--owner", ["without spaces"]),
    (["serve", "--metrics-listen", "nowhere"], {}, 2, "--metrics-listen", ["port is missing"]),
    (["create-api-key"], {}, 2, "--owner", ["required"]),
]
BAD_DATABASE_URLS = [
    # (database URL, exit code, fragments); each is tried by every command that opens the database
    ("not a url", 2, ["is not a database URL", "postgresql+asyncpg://"]),
    ("mysql://u:secret@h/db", 2, ["'mysql' is not supported", "postgresql+asyncpg://"]),
    ("postgresql+psycopg2://u:secret@h/db", 2, ["'psycopg2' is not supported", "write postgresql+asyncpg://"]),
    ("sqlite+pysqlite:///x.db", 2, ["'pysqlite' is not supported", "write sqlite+aiosqlite://"]),
    ("sqlite://", 2, ["in-memory"]),
    ("sqlite:///missing/dir/x.db", 1, ["directory", "missing/dir", "does not exist"]),
    ("sqlite:///a-file/x.db", 1, ["a-file is not a directory"]),
]
COMMANDS = [["serve"], ["migrate"], ["create-api-key", "--owner", OWNER]]


@pytest.mark.parametrize(
    ("argv", "env", "code", "label", "fragments"),
    BAD_VALUES,
    ids=[" ".join([*(f"{k}={v}" for k, v in case[1].items()), *case[0]]) for case in BAD_VALUES],
)
async def test_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, argv: list[str], env: dict[str, str], code: int, label: str, fragments: list[str]
) -> None:
    got, out, err = await run(*argv, env=clean_env(**env), cwd=tmp_path)

    assert (got, out) == (code, "")
    assert_one_line(err, label, *fragments)
    assert list(tmp_path.iterdir()) == []  # checked before anything was started or created


@pytest.mark.parametrize(("url", "code", "fragments"), BAD_DATABASE_URLS)
async def test_a_bad_database_url_is_one_line_naming_it(
    tmp_path: Path, url: str, code: int, fragments: list[str]
) -> None:
    """Every command that opens the database, with the URL as a flag, and `serve` with it from the environment."""
    (tmp_path / "a-file").write_text("")
    attempts = [([*command, "--database-url", url], clean_env(), "--database-url") for command in COMMANDS]
    attempts.append((["serve"], clean_env(MAKIMA_DATABASE_URL=url), "MAKIMA_DATABASE_URL"))
    for argv, env, label in attempts:
        got, _, err = await run(*argv, env=env, cwd=tmp_path)

        assert got == code, (argv, err)
        assert_one_line(err, label, *fragments)
        assert "secret" not in err  # a password is never repeated
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
async def test_a_read_only_sqlite_directory_is_one_line(tmp_path: Path, command: list[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    got, _, err = await run(*command, "--database-url", f"sqlite:///{locked / 'x.db'}", cwd=tmp_path)
    assert got == 1
    assert_one_line(err, "--database-url", "not writable")


async def test_an_sqlite_file_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """Even where the permission check cannot tell (root), SQLite's own refusal is one line."""
    got, _, err = await run("migrate", "--database-url", "sqlite:////proc/makima.db", cwd=tmp_path)
    assert got == 1
    assert_one_line(err, "--database-url", "sqlite+aiosqlite:////proc/makima.db")


async def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://makima:secret@127.0.0.1:{free_port()}/makima"
    for command in COMMANDS:
        got, _, err = await run(*command, env=clean_env(MAKIMA_DATABASE_URL=url), cwd=tmp_path)
        assert got == 1
        assert_one_line(err, "MAKIMA_DATABASE_URL", "cannot connect to postgresql+asyncpg://makima:***@127.0.0.1")
        assert "secret" not in err


async def test_a_missing_postgresql_database_is_one_line(empty_database_url: str, tmp_path: Path) -> None:
    if not empty_database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL database")
    missing = empty_database_url.rsplit("/", 1)[0] + "/makima_no_such_database"
    for command in COMMANDS:
        got, _, err = await run(*command, "--database-url", missing, cwd=tmp_path)
        assert got == 1
        assert_one_line(err, "--database-url", '"makima_no_such_database" does not exist')


async def test_a_workspace_root_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    got, _, err = await run(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--workspace-root",
        str(tmp_path / "a-file" / "ws"),
        cwd=tmp_path,
    )
    assert got == 1
    assert_one_line(err, "--workspace-root", "cannot create")


# -- database URLs that mean the async driver -------------------------------------------------------


async def test_plain_scheme_urls_work_with_the_async_driver(empty_database_url: str, tmp_path: Path) -> None:
    """`postgresql://`, `postgres://` and `sqlite:///` are served through asyncpg and aiosqlite."""
    if empty_database_url.startswith("postgresql"):
        plain = empty_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        also = empty_database_url.replace("postgresql+asyncpg://", "postgres://", 1)
    else:
        plain = empty_database_url.replace("sqlite+aiosqlite://", "sqlite://", 1)
        also = plain
    code, out, err = await run("migrate", "--database-url", also, cwd=tmp_path)
    assert (code, out.splitlines()[-1]) == (0, "database is up to date"), err
    key = await new_key(plain, tmp_path)
    port = free_port()
    env = clean_env(MAKIMA_DATABASE_URL=plain, MAKIMA_WORKSPACE_ROOT=str(tmp_path / "ws"))

    async with serving("--listen", f"127.0.0.1:{port}", port=port, env=env, cwd=tmp_path):
        await calls_all_reach(port, key, 2)


# -- the parsers themselves -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        ("0.0.0.0:65535", Address("0.0.0.0", 65535)),
        ("localhost:50051", Address("localhost", 50051)),
        ("db-1.example.com:5", Address("db-1.example.com", 5)),
        ("[::1]:50051", Address("::1", 50051)),
        ("[::]:0", Address("::", 0)),
    ],
)
def test_listen_addresses_that_are_accepted(text: str, address: Address) -> None:
    assert parse_listen(text) == address
    assert str(address) == text


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///./makima.db", "sqlite+aiosqlite:///./makima.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
    ],
)
def test_database_urls_are_rewritten_to_the_async_driver(url: str, normalized: str) -> None:
    assert normalize_database_url(url) == normalized


def test_a_database_url_error_never_repeats_the_url() -> None:
    with pytest.raises(DatabaseUrlError) as info:
        normalize_database_url("oracle://u:hunter2@h/db")
    assert "hunter2" not in str(info.value)


# -- the operator's command line ---------------------------------------------------------------------


async def test_migrate_names_the_migrations_it_applies(empty_database_url: str, tmp_path: Path) -> None:
    first = await run("migrate", "--database-url", empty_database_url, cwd=tmp_path)
    again = await run("migrate", "--database-url", empty_database_url, cwd=tmp_path)

    applied = [line.split()[1] for line in first[1].splitlines() if line.startswith("applied ")]
    assert first[0] == 0 and applied == sorted(applied) and applied[0] == "0001" and len(applied) >= 8, first
    assert first[1].splitlines()[-1] == "database is up to date"
    assert again[:2] == (0, "database is up to date\n"), again


async def test_every_command_has_help_with_examples_and_serve_lists_its_variables(tmp_path: Path) -> None:
    """`--version`, each command's `--help` with examples, and every server variable the README's
    configuration table lists named by `serve --help`."""
    version = await run("--version", cwd=tmp_path)
    helps = {command: await run(command, "--help", cwd=tmp_path) for command in COMMAND_OPTIONS}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("For PostgreSQL use")]
    variables = set(re.findall(r"MAKIMA_[A-Z_]+", table))

    assert version[0] == 0 and version[1].startswith("makima-server ") and version[1].split()[1][0].isdigit()
    for command, (code, out, _err) in helps.items():
        assert code == 0 and "examples:" in out and f"makima-server {command}" in out, command
    assert len(variables) >= 14
    assert all(variable in helps["serve"][1] for variable in variables), variables - set(helps["serve"][1].split())
