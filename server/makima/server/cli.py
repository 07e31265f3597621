"""`makima-server`: serve, migrate, create-api-key, rotate-page-token-key.

Every setting is checked before anything starts, and a setting that cannot work ends the command
with one line, `makima-server: <flag or MAKIMA_* variable>: <what is wrong>`, never a traceback
(that is logged at DEBUG). Exit codes: 0 success, 2 a bad value or command line, 1 a failure of a
well-formed setting (port taken, database unreachable or not writable) or an unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import math
import multiprocessing
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from makima.server import logs, telemetry
from makima.server.config import DEFAULT_LISTEN, EXIT_FAILURE, SettingError, Settings, parse_listen
from makima.server.domain.errors import DomainError
from makima.server.store.engine import DEFAULT_DATABASE_URL, normalize_database_url

if TYPE_CHECKING:
    from makima.server.domain.runtime import Runtime

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _seconds(text: str) -> float:
    """A number of seconds above zero (zero would make a loop spin or a grace period vanish)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be more than 0 seconds, not {text!r}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, not {text!r}")
    return value


def _listen(text: str) -> str:
    return str(parse_listen(text))


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (any case), not {text!r}")
    return text.upper()


def _keep(text: str) -> int | None:
    """How many page-token keys to keep after a rotation (empty: keep them all); the new one always stays."""
    if text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1 (the new key is always kept), not {text!r}")
    return value


def _owner(text: str) -> str:
    """An owner's name or UUID: printable, no spaces, at most 200 characters."""
    if not text or len(text) > 200 or not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(f"must be a name or UUID of 1-200 printable characters without spaces, not {text!r}")
    return text


def _optional_listen(text: str) -> str | None:
    return _listen(text) if text else None


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _optional_owner(text: str) -> str | None:
    return _owner(text) if text else None


def _key_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValueError(f"must be a key id (a UUID, as list-api-keys shows it), not {text!r}") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _expires_in(text: str) -> timedelta | None:
    """A lifetime such as 90d, 12h, 30m or 45s (empty: never expires)."""
    if text == "":
        return None
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit() or int(number) < 1:
        raise ValueError(f"must be a whole number of s, m, h or d, such as 90d, not {text!r}")
    return timedelta(seconds=int(number) * _UNITS[unit])


@dataclass(frozen=True)
class _Option:
    """A setting: its flag, the MAKIMA_* variable that gives its default, and how its text is read."""

    flag: str
    env: str | None
    default: str | None
    parse: Callable[[str], Any]
    help: str

    @property
    def field(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


LOG_LEVEL = _Option("--log-level", "MAKIMA_LOG_LEVEL", "INFO", _log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL")
DATABASE_URL = _Option(
    "--database-url",
    "MAKIMA_DATABASE_URL",
    DEFAULT_DATABASE_URL,
    normalize_database_url,
    "postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///path; postgresql:// and postgres:// mean "
    "postgresql+asyncpg://, sqlite:/// means sqlite+aiosqlite:///",
)
SERVE_OPTIONS = (
    _Option(
        "--listen",
        "MAKIMA_LISTEN",
        DEFAULT_LISTEN,
        _listen,
        "host:port to listen on: an IPv4 address, a host name or [IPv6 address], port 0-65535",
    ),
    DATABASE_URL,
    _Option("--workspace-root", "MAKIMA_WORKSPACE_ROOT", "./workspace", Path, "directory holding every task worktree"),
    _Option(
        "--shutdown-grace", "MAKIMA_SHUTDOWN_GRACE", "10", _seconds, "seconds in-flight calls get to finish on shutdown"
    ),
    _Option(
        "--keep-alive-seconds",
        "MAKIMA_KEEP_ALIVE_SECONDS",
        "15",
        _seconds,
        "seconds between keep-alives on idle timeline streams",
    ),
    _Option(
        "--timeline-recheck-seconds",
        "MAKIMA_TIMELINE_RECHECK_SECONDS",
        "1",
        _seconds,
        "seconds between database re-checks of idle timeline streams",
    ),
    _Option(
        "--lease-seconds",
        "MAKIMA_LEASE_SECONDS",
        "30",
        _seconds,
        "seconds a claimed task's lease lasts without a heartbeat",
    ),
    _Option(
        "--sweep-seconds",
        "MAKIMA_SWEEP_SECONDS",
        "5",
        _seconds,
        "seconds between sweeps that interrupt tasks whose lease expired",
    ),
    _Option(
        "--tls-cert",
        "MAKIMA_TLS_SERVER_CERT",
        "",
        _optional_path,
        "serve TLS with this certificate chain (PEM); needs --tls-key. Without: plaintext, meant for 127.0.0.1",
    ),
    _Option("--tls-key", "MAKIMA_TLS_SERVER_KEY", "", _optional_path, "private key (PEM) of --tls-cert"),
    _Option(
        "--tls-client-ca",
        "MAKIMA_TLS_CLIENT_CA",
        "",
        _optional_path,
        "require client certificates signed by this CA (PEM): mutual TLS; needs --tls-cert",
    ),
    _Option(
        "--metrics-listen",
        "MAKIMA_METRICS_LISTEN",
        "",
        _optional_listen,
        "serve Prometheus metrics at http://HOST:PORT/metrics (with --workers: the sum of every worker); "
        "empty: no metrics",
    ),
    _Option(
        "--workers",
        "MAKIMA_WORKERS",
        "1",
        _workers,
        "server processes sharing the port (SO_REUSEPORT); more than 1 needs PostgreSQL and a fixed port",
    ),
)
KEY_OPTIONS = (
    DATABASE_URL,
    _Option(
        "--owner",
        None,
        None,
        _owner,
        "the owner's name (found, else created) or UUID (created if new)",
    ),
    _Option("--name", None, "", str, "a label for the key"),
    _Option("--expires-in", None, "", _expires_in, "lifetime of the key, such as 90d, 12h or 30m; empty: none"),
)
LIST_KEY_OPTIONS = (
    DATABASE_URL,
    _Option("--owner", None, "", _optional_owner, "only the keys of this owner (name or UUID); empty: all"),
)
REVOKE_KEY_OPTIONS = (
    DATABASE_URL,
    _Option(
        "--key-id",
        None,
        None,
        _key_id,
        "the id of the key to revoke, from list-api-keys; every server refuses it within 5 seconds",
    ),
)
ROTATE_OPTIONS = (
    DATABASE_URL,
    _Option(
        "--keep",
        None,
        "",
        _keep,
        "then drop every key but the newest KEEP (at least 1); tokens signed by a dropped key stop working, "
        "and running servers notice within 5 minutes",
    ),
)
COMMAND_OPTIONS = {
    "serve": SERVE_OPTIONS,
    "migrate": (DATABASE_URL,),
    "create-api-key": KEY_OPTIONS,
    "list-api-keys": LIST_KEY_OPTIONS,
    "revoke-api-key": REVOKE_KEY_OPTIONS,
    "rotate-page-token-key": ROTATE_OPTIONS,
}


def _add(parser: argparse.ArgumentParser, option: _Option) -> None:
    source = f"env {option.env}; " if option.env else ""
    default = "required" if option.default is None else f"default {option.default or 'empty'}"
    parser.add_argument(
        option.flag, dest=option.field, metavar=option.field.upper(), help=f"{option.help} ({source}{default})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="makima-server",
        description="makima history & resume service (gRPC).",
        epilog="examples:\n"
        "  makima-server serve\n"
        "  makima-server serve --listen 0.0.0.0:50051 "
        "--database-url postgresql://makima@db/makima\n"
        "  makima-server create-api-key --owner alice --name laptop --expires-in 90d\n"
        "  makima-server list-api-keys --owner alice\n"
        "  makima-server revoke-api-key --key-id <KEY ID from list-api-keys>\n"
        "\n"
        "exit codes: 0 done; 2 a bad value of a flag or MAKIMA_* variable; 1 a setting the machine\n"
        "refuses (port in use, database unreachable or not writable) or an unexpected failure.\n"
        "Each problem is one line on stderr naming the flag or variable; --log-level DEBUG adds its trace.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add(parser, LOG_LEVEL)
    parser.add_argument("--version", action="version", version=f"makima-server {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, options in COMMAND_OPTIONS.items():
        summary, *examples = COMMAND_HELP[command]
        epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)
        if command == "serve":
            epilog += "\n\n" + _SERVE_ENVIRONMENT
        sub = commands.add_parser(
            command,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for option in options:
            _add(sub, option)
    return parser


def _version() -> str:
    return importlib.metadata.version("makima-history")


# Each command's one-line summary, then examples of it.
COMMAND_HELP = {
    "serve": (
        "migrate the database, then serve gRPC until SIGTERM/SIGINT",
        "makima-server serve",
        "makima-server serve --listen 0.0.0.0:50051 --database-url postgresql://makima@db/makima --workers 4",
        "makima-server serve --tls-cert server.pem --tls-key server-key.pem --metrics-listen 127.0.0.1:9464",
        "MAKIMA_LOG_LEVEL=DEBUG makima-server serve --workspace-root /srv/makima",
    ),
    "migrate": (
        "apply the database migrations it lacks, name each one, and exit",
        "makima-server migrate",
        "makima-server migrate --database-url postgresql://makima@db/makima",
    ),
    "create-api-key": (
        "create an API key for an owner (found by name, else created) and print it once",
        "makima-server create-api-key --owner alice",
        "makima-server create-api-key --owner alice --name laptop --expires-in 90d",
        "export MAKIMA_API_KEY=$(makima-server create-api-key --owner alice)",
    ),
    "list-api-keys": (
        "list API keys (id, owner, name, prefix, times); never their secrets",
        "makima-server list-api-keys",
        "makima-server list-api-keys --owner alice",
    ),
    "revoke-api-key": (
        "revoke an API key: it stops working on every server within seconds",
        "makima-server revoke-api-key --key-id 6f1c0b1e-2c1d-4e0b-9a57-0c9f6f1f2a10",
    ),
    "rotate-page-token-key": (
        "add a new page-token signing key; older keys still verify tokens until dropped with --keep",
        "makima-server rotate-page-token-key",
        "makima-server rotate-page-token-key --keep 1",
    ),
}
_SERVE_ENVIRONMENT = "environment (each flag above names its own MAKIMA_* variable):\n" + "\n".join(
    [
        *(f"  {option.env:<34}{option.flag}" for option in SERVE_OPTIONS if option.env),
        f"  {LOG_LEVEL.env:<34}{LOG_LEVEL.flag} (given before the command)",
        f"  {'OTEL_TRACES_EXPORTER':<34}console or otlp: OpenTelemetry traces of RPCs and SQL (off when unset)",
        f"  {'OTEL_SERVICE_NAME, OTEL_*':<34}the standard OpenTelemetry SDK settings",
        f"  {'PROMETHEUS_MULTIPROC_DIR':<34}where --workers keep their metrics (default: a temporary directory)",
    ]
)


class _Values:
    """The settings of one command, each read from its flag, else its MAKIMA_* variable, else its default.

    `labels` names each setting as the user gave it, so a problem is reported under that name;
    `problem` is the first setting that cannot be read, if any.
    """

    def __init__(self, args: argparse.Namespace, options: tuple[_Option, ...]) -> None:
        self.labels: dict[str, str] = {}
        self._values: dict[str, Any] = {}
        self.problem: SettingError | None = None
        for option in options:
            text = getattr(args, option.field)
            label = option.flag
            if text is None and option.env is not None and option.env in os.environ:
                text, label = os.environ[option.env], option.env
            self.labels[option.field] = label
            if text is None:
                text = option.default
            try:
                if text is None:
                    raise ValueError("is required")
                self._values[option.field] = option.parse(text)
            except ValueError as exc:
                self.problem = self.problem or SettingError(option.field, str(exc))

    def __getitem__(self, field: str) -> Any:
        return self._values[field]


def _fail(labels: Mapping[str, str], exc: SettingError) -> int:
    log.debug("start-up failed", exc_info=exc)
    print(f"makima-server: {labels.get(exc.field, exc.field)}: {exc.problem}", file=sys.stderr)
    return exc.exit_code


def _reported(labels: Mapping[str, str], run: Callable[[], int]) -> int:
    """`run()`, with a failure reported as one line and an exit code instead of a traceback."""
    try:
        return run()
    except SettingError as exc:
        return _fail(labels, exc)
    except DomainError as exc:  # e.g. an unknown key or owner named on the command line
        print(f"makima-server: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        log.error("unexpected failure", exc_info=exc)
        print(f"makima-server: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def _migrate(database_url: str) -> list[str]:
    """Apply the migrations the database lacks; returns them (see `migrate.upgrade`)."""
    from makima.server.app import open_database

    db, applied = await open_database(database_url)
    await db.dispose()
    return applied


@asynccontextmanager
async def _runtime(database_url: str) -> AsyncIterator[Runtime]:
    """The database of an operator command, migrated, for the length of the command."""
    from makima.server.app import open_database
    from makima.server.domain.runtime import Runtime

    db, _applied = await open_database(database_url)
    try:
        yield Runtime(db)
    finally:
        await db.dispose()


async def _create_api_key(database_url: str, owner: str, name: str, expires_in: timedelta | None) -> str:
    from makima.server.domain.auth import create_api_key

    try:
        by_id: dict[str, Any] = {"owner_id": uuid.UUID(owner)}
    except ValueError:
        by_id = {"owner_name": owner}
    expire_time = None if expires_in is None else datetime.now(UTC) + expires_in
    async with _runtime(database_url) as rt:
        return (await create_api_key(rt, name=name, expire_time=expire_time, **by_id)).secret


async def _list_api_keys(database_url: str, owner: str | None) -> str:
    """One line a key, as tab-separated columns under a header."""
    from makima.server.domain.auth import list_api_keys

    async with _runtime(database_url) as rt:
        keys = await list_api_keys(rt, owner=owner)

    def when(moment: datetime | None) -> str:
        return "-" if moment is None else moment.isoformat(timespec="seconds")

    lines = ["KEY ID\tOWNER\tOWNER ID\tNAME\tPREFIX\tCREATED\tEXPIRES\tREVOKED"]
    lines += [
        f"{k.key_id}\t{k.owner_name or '-'}\t{k.owner_id}\t{k.name or '-'}\t{k.key_prefix}\t"
        f"{when(k.create_time)}\t{when(k.expire_time)}\t{when(k.revoke_time)}"
        for k in keys
    ]
    return "\n".join(lines)


async def _revoke_api_key(database_url: str, key_id: uuid.UUID) -> None:
    from makima.server.domain.auth import revoke_api_key

    async with _runtime(database_url) as rt:
        await revoke_api_key(rt, key_id=key_id)


async def _rotate_page_token_key(database_url: str, keep: int | None) -> str:
    from makima.server.domain.page_tokens import rotate

    async with _runtime(database_url) as rt:
        done = await rotate(rt, keep=keep)
    return f"new page-token key {done.key_id}; {done.removed} older key(s) dropped, {done.remaining} kept"


def _serve_worker(settings: Settings, log_level: str, labels: Mapping[str, str]) -> None:
    from makima.server.app import serve

    logs.configure(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into one SIGTERM each

    def run() -> int:
        asyncio.run(serve(settings))
        return 0

    sys.exit(_reported(labels, run))


def _serve_workers(settings: Settings, workers: int, log_level: str, labels: Mapping[str, str]) -> int:
    """Several server processes on one port (gRPC binds with SO_REUSEPORT), over one PostgreSQL.

    SQLite is refused: its timeline wake-ups do not cross processes. The port is claimed for these
    workers alone (`hold_port`) and migrations run once here, so the workers start on an
    up-to-date schema; SIGTERM or SIGINT is passed on to every worker.
    """
    from makima.server.app import hold_port, server_credentials

    server_credentials(settings)  # a TLS file that cannot work fails here once, not in every worker
    if not settings.database_url.startswith("postgresql"):
        raise SettingError("workers", "more than 1 needs a PostgreSQL database URL")
    if settings.listen.rsplit(":", 1)[-1] == "0":
        raise SettingError("workers", "more than 1 needs a fixed port in the listen address, not 0")
    port_lock = hold_port(settings.listen)
    metrics_dir = stop_metrics = None
    try:
        asyncio.run(_migrate(settings.database_url))
        if settings.metrics_listen is not None:
            # Before any worker starts: each one records into this directory, this process serves the sum.
            metrics_dir = telemetry.MultiprocessDir()
            stop_metrics = telemetry.serve_metrics(settings.metrics_listen)
            settings = replace(settings, metrics_listen=None)
        context = multiprocessing.get_context("spawn")
        children = [
            context.Process(target=_serve_worker, args=(settings, log_level, dict(labels)), name=f"makima-worker-{i}")
            for i in range(workers)
        ]
        for child in children:
            child.start()

        def stop(signum: int, _frame: object) -> None:
            for child in children:
                if child.pid is not None and child.is_alive():
                    os.kill(child.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for child in children:
            child.join()
            if metrics_dir is not None and child.pid is not None:
                metrics_dir.worker_exited(child.pid)
        return max((child.exitcode or 0) for child in children)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        if metrics_dir is not None:
            metrics_dir.close()
        if port_lock is not None:
            port_lock.close()


def _serve(values: _Values, log_level: str) -> int:
    from makima.server.app import serve

    settings = Settings(
        listen=values["listen"],
        database_url=values["database_url"],
        workspace_root=values["workspace_root"],
        shutdown_grace=values["shutdown_grace"],
        keep_alive_seconds=values["keep_alive_seconds"],
        timeline_recheck_seconds=values["timeline_recheck_seconds"],
        lease_seconds=values["lease_seconds"],
        sweep_seconds=values["sweep_seconds"],
        tls_cert=values["tls_cert"],
        tls_key=values["tls_key"],
        tls_client_ca=values["tls_client_ca"],
        metrics=values["metrics_listen"] is not None,
        metrics_listen=values["metrics_listen"],
    )
    if values["workers"] > 1:
        settings = replace(settings, reuse_port=True, workers=values["workers"])
        return _serve_workers(settings, values["workers"], log_level, values.labels)
    asyncio.run(serve(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = _Values(args, (LOG_LEVEL,))
    if level.problem is not None:
        return _fail(level.labels, level.problem)
    log_level = level["log_level"]
    logs.configure(log_level)
    values = _Values(args, COMMAND_OPTIONS[args.command])
    labels = values.labels
    if values.problem is not None:
        return _fail(labels, values.problem)
    if args.command == "serve":
        return _reported(labels, lambda: _serve(values, log_level))
    if args.command == "migrate":

        def migrate() -> int:
            for migration in asyncio.run(_migrate(values["database_url"])):
                print(f"applied {migration}")
            print("database is up to date")
            return 0

        return _reported(labels, migrate)
    if args.command == "rotate-page-token-key":

        def rotate() -> int:
            print(asyncio.run(_rotate_page_token_key(values["database_url"], values["keep"])))
            return 0

        return _reported(labels, rotate)

    if args.command == "list-api-keys":

        def list_keys() -> int:
            print(asyncio.run(_list_api_keys(values["database_url"], values["owner"])))
            return 0

        return _reported(labels, list_keys)
    if args.command == "revoke-api-key":

        def revoke() -> int:
            asyncio.run(_revoke_api_key(values["database_url"], values["key_id"]))
            print(f"revoked {values['key_id']}: every server refuses it within 5 seconds")
            return 0

        return _reported(labels, revoke)

    def create_key() -> int:
        secret = asyncio.run(
            _create_api_key(values["database_url"], values["owner"], values["name"], values["expires_in"])
        )
        print(secret)
        print("store this key now: it cannot be shown again", file=sys.stderr)
        return 0

    return _reported(labels, create_key)


if __name__ == "__main__":
    raise SystemExit(main())
