"""makima.worktree is what a daemon installs: it must not drag in the server, a database or gRPC."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("makima.server", "sqlalchemy", "sqlmodel", "asyncpg", "aiosqlite", "alembic", "grpc")


def test_the_library_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, makima.worktree, makima.worktree.local, makima.worktree.verify, makima.worktree.transfer\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
