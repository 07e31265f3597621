"""The workspace root holding every task worktree, and how the domain runs git work there."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from makima.server import git
from makima.server.domain.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

P = ParamSpec("P")
T = TypeVar("T")


class Workspace:
    """Task worktrees live at <root>/tasks/<task id>; git calls run in threads, one at a time per worktree."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._locks: dict[str, asyncio.Lock] = {}

    def task_path(self, task_id: uuid.UUID) -> Path:
        return self.root / "tasks" / str(task_id)

    def inside(self, candidate: str, *, field: str) -> Path:
        """A path given by a caller, refused (INVALID_ARGUMENT on `field`) if it leaves the root."""
        try:
            return git.resolve_inside(self.root, candidate)
        except git.PathEscapeError:
            raise InvalidArgument.of(field, "must be a path inside the workspace root") from None

    def lock(self, path: str | Path) -> asyncio.Lock:
        return self._locks.setdefault(str(path), asyncio.Lock())

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a git-layer call in a thread, turning git errors into domain errors."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except git.GitError as exc:
            raise _domain_error(exc) from exc

    async def discard(self, path: Path) -> None:
        """Remove a worktree created by a transaction that then failed."""
        await asyncio.to_thread(shutil.rmtree, path, True)


def _domain_error(exc: git.GitError) -> DomainError:
    metadata = {k: str(v) for k, v in exc.metadata.items()}
    if isinstance(exc, git.InvalidRefNameError):
        return InvalidArgument.of("branch_name", str(exc), reason="INVALID_BRANCH_NAME")
    if isinstance(exc, git.BranchExistsError):
        return AlreadyExists(str(exc), reason="BRANCH_EXISTS", metadata=metadata)
    if isinstance(exc, git.RefNotFoundError):
        return NotFound(str(exc), reason="REF_NOT_FOUND", metadata=metadata)
    if isinstance(exc, git.ConcurrentUpdateError):
        return Aborted(str(exc), reason="CONCURRENT_GIT_UPDATE", metadata=metadata)
    if isinstance(exc, git.PathEscapeError):
        return InvalidArgument(str(exc), reason="PATH_ESCAPES_WORKSPACE", metadata=metadata)
    return FailedPrecondition(str(exc), reason="GIT_ERROR", metadata=metadata)
