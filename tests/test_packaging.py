"""The wheel installs into a fresh venv and gives working `makima-server` and `makima` commands."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest


@pytest.mark.timeout(600)
def test_wheel_installs_and_both_commands_run(repo_root: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(repo_root)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("makima_history-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "makima/server/cli.py",
        "makima/v1/history_pb2.py",
        "makima/v1/descriptors.binpb",  # what reflection serves, comments included
        "makima/v1/py.typed",
        "makima/cli/main.py",
    } <= names
    assert "makima/__init__.py" not in names  # a namespace package over server/ and clients/python/
    assert any(n.startswith("makima/server/store/migrations/versions/") for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run([str(bin_dir / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
    for command, expected in (("makima-server", "create-api-key"), ("makima", "contract-create")):
        result = subprocess.run([str(bin_dir / command), "--help"], capture_output=True, text=True, check=True)
        assert expected in result.stdout
    # The installed server finds its packaged migrations.
    db = tmp_path / "fresh.db"
    migrated = subprocess.run(
        [str(bin_dir / "makima-server"), "migrate", "--database-url", f"sqlite+aiosqlite:///{db}"],
        capture_output=True,
        text=True,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert db.stat().st_size > 0
