"""`makima-server`: serve, migrate, create-api-key, rotate-page-token-key."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import uuid
from pathlib import Path

from makima.server import logs
from makima.server.config import DEFAULT_LISTEN, Settings
from makima.server.store.engine import DEFAULT_DATABASE_URL


def _positive(text: str) -> float:
    """A number of seconds above zero (zero would make a loop spin or a grace period vanish)."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("MAKIMA_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db "
        "(env MAKIMA_DATABASE_URL; default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="makima-server",
        description="makima history & resume service (gRPC).",
        epilog="examples:\n"
        "  makima-server serve\n"
        "  makima-server serve --listen 0.0.0.0:50051 "
        "--database-url postgresql+asyncpg://makima@db/makima\n"
        "  makima-server create-api-key --owner 4f1c2e1a-0000-4000-8000-000000000001 --name laptop",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default=os.environ.get("MAKIMA_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate the database, then serve gRPC until SIGTERM/SIGINT")
    serve.add_argument(
        "--listen",
        default=os.environ.get("MAKIMA_LISTEN", DEFAULT_LISTEN),
        help="host:port to listen on (env MAKIMA_LISTEN; default %(default)s)",
    )
    _database_option(serve)
    serve.add_argument(
        "--workspace-root",
        type=Path,
        default=Path(os.environ.get("MAKIMA_WORKSPACE_ROOT", "./workspace")),
        help="directory holding every task worktree (env MAKIMA_WORKSPACE_ROOT; default %(default)s)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_positive,
        default=os.environ.get("MAKIMA_SHUTDOWN_GRACE", "10"),
        help="seconds in-flight calls get to finish on shutdown (default %(default)s)",
    )

    serve.add_argument(
        "--keep-alive-seconds",
        type=_positive,
        default=os.environ.get("MAKIMA_KEEP_ALIVE_SECONDS", "15"),
        help="seconds between keep-alives on idle timeline streams (default %(default)s)",
    )

    serve.add_argument(
        "--timeline-recheck-seconds",
        type=_positive,
        default=os.environ.get("MAKIMA_TIMELINE_RECHECK_SECONDS", "1"),
        help="seconds between database re-checks of idle timeline streams (default %(default)s)",
    )

    serve.add_argument(
        "--lease-seconds",
        type=_positive,
        default=os.environ.get("MAKIMA_LEASE_SECONDS", "30"),
        help="seconds a claimed task's lease lasts without a heartbeat (env MAKIMA_LEASE_SECONDS; default %(default)s)",
    )

    serve.add_argument(
        "--sweep-seconds",
        type=_positive,
        default=os.environ.get("MAKIMA_SWEEP_SECONDS", "5"),
        help="seconds between sweeps that interrupt tasks whose lease expired "
        "(env MAKIMA_SWEEP_SECONDS; default %(default)s)",
    )

    serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MAKIMA_WORKERS", "1")),
        help="server processes sharing the port (SO_REUSEPORT); more than 1 needs PostgreSQL "
        "(env MAKIMA_WORKERS; default %(default)s)",
    )

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    _database_option(migrate)

    key = commands.add_parser("create-api-key", help="create an API key for an owner and print it once")
    _database_option(key)
    key.add_argument("--owner", required=True, type=uuid.UUID, help="owner UUID (created if new)")
    key.add_argument("--name", default="", help="a label for the key")

    rotate = commands.add_parser(
        "rotate-page-token-key",
        help="add a new page-token signing key; older keys still verify tokens until dropped with --keep",
    )
    _database_option(rotate)
    rotate.add_argument(
        "--keep",
        type=_keep_count,
        default=None,
        help="then drop every key but the newest KEEP (at least 1); tokens signed by a dropped key stop "
        "working, and running servers notice within 5 minutes",
    )
    return parser


async def _migrate(database_url: str) -> None:
    from makima.server.store import migrate
    from makima.server.store.engine import Database

    db = Database(database_url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


async def _create_api_key(database_url: str, owner: uuid.UUID, name: str) -> str:
    from makima.server.domain.auth import create_api_key
    from makima.server.domain.runtime import Runtime
    from makima.server.store import migrate
    from makima.server.store.engine import Database

    db = Database(database_url)
    try:
        await migrate.upgrade(db)
        return (await create_api_key(Runtime(db), owner_id=owner, name=name)).secret
    finally:
        await db.dispose()


def _keep_count(text: str) -> int:
    """How many page-token keys to keep: the new one always stays."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (the new key is always kept), not {text}")
    return value


async def _rotate_page_token_key(database_url: str, keep: int | None) -> str:
    from makima.server.domain.page_tokens import rotate
    from makima.server.domain.runtime import Runtime
    from makima.server.store import migrate
    from makima.server.store.engine import Database

    db = Database(database_url)
    try:
        await migrate.upgrade(db)
        done = await rotate(Runtime(db), keep=keep)
        return f"new page-token key {done.key_id}; {done.removed} older key(s) dropped, {done.remaining} kept"
    finally:
        await db.dispose()


def _serve_worker(settings: Settings, log_level: str) -> None:
    from makima.server.app import serve

    logs.configure(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into one SIGTERM each
    asyncio.run(serve(settings))


def _serve_workers(settings: Settings, workers: int, log_level: str) -> int:
    """Several server processes on one port (gRPC binds with SO_REUSEPORT), over one PostgreSQL.

    SQLite is refused: its timeline wake-ups do not cross processes. Migrations run once here, so
    the workers start on an up-to-date schema; SIGTERM or SIGINT is passed on to every worker.
    """
    if not settings.database_url.startswith("postgresql"):
        print("makima-server: --workers > 1 needs a PostgreSQL --database-url", file=sys.stderr)
        return 2
    if settings.listen.rsplit(":", 1)[-1] == "0":
        print("makima-server: --workers > 1 needs a fixed port in --listen", file=sys.stderr)
        return 2
    asyncio.run(_migrate(settings.database_url))
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve_worker, args=(settings, log_level), name=f"makima-worker-{i}")
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
    return max((child.exitcode or 0) for child in children)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    if args.command == "serve":
        from makima.server.app import serve

        settings = Settings(
            listen=args.listen,
            database_url=args.database_url,
            workspace_root=args.workspace_root,
            shutdown_grace=args.shutdown_grace,
            keep_alive_seconds=args.keep_alive_seconds,
            timeline_recheck_seconds=args.timeline_recheck_seconds,
            lease_seconds=args.lease_seconds,
            sweep_seconds=args.sweep_seconds,
        )
        if args.workers > 1:
            return _serve_workers(settings, args.workers, args.log_level)
        asyncio.run(serve(settings))
    elif args.command == "migrate":
        asyncio.run(_migrate(args.database_url))
        print("database is up to date")
    elif args.command == "rotate-page-token-key":
        print(asyncio.run(_rotate_page_token_key(args.database_url, args.keep)))
    else:
        secret = asyncio.run(_create_api_key(args.database_url, args.owner, args.name))
        print(secret)
        print("store this key now: it cannot be shown again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
