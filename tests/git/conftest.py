"""Fixtures of the git layer tests: hermetic git configuration and a fresh worktree per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from makima.server.git import init_worktree


@pytest.fixture(autouse=True)
def hermetic_git(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Neither dulwich nor the git command line may read the machine's own configuration or excludes."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@localhost")


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    """An empty worktree on the unborn branch `main`."""
    path = tmp_path / "wt"
    init_worktree(path, branch="main")
    return path
