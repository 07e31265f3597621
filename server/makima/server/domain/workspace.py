"""The workspace root holding every task worktree, and how the domain runs git work there.

Every file system failure of git work is named here, in one place: a full disk is RESOURCE_EXHAUSTED
(WORKSPACE_FULL), a path the server may not write is FAILED_PRECONDITION (WORKSPACE_NOT_WRITABLE),
each logged once with its cause. Names that become paths are bounded before any file is touched, so
ENAMETOOLONG is never the answer to a caller's input.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
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
    ResourceExhausted,
)

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
# Linux limits: a whole path (PATH_MAX, with its NUL) and one file name (NAME_MAX), in bytes.
MAX_PATH_BYTES = 4095
MAX_FILE_NAME_BYTES = 255
_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class Workspace:
    """Task worktrees live at <root>/tasks/<task id>; git calls run in threads, one at a time per worktree."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._locks: dict[str, asyncio.Lock] = {}

    def task_path(self, task_id: uuid.UUID) -> Path:
        return self.root / "tasks" / str(task_id)

    def lock(self, path: str | Path) -> asyncio.Lock:
        return self._locks.setdefault(str(path), asyncio.Lock())

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a git-layer call in a thread, turning git and file system errors into domain errors."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except git.GitError as exc:
            raise _domain_error(exc) from exc
        except OSError as exc:
            # Not every OSError carries its file name (os.utime on a read-only mount does not): then
            # name the worktree the call works on, its last Path argument (clone: the new worktree).
            worktree = next((a for a in reversed(args) if isinstance(a, Path)), self.root)
            error = self._storage_error(exc, worktree)
            if error is None:
                raise  # unexpected: INTERNAL, logged with its trace by the api layer
            log.error("%s", error.message, exc_info=exc, extra={"reason": error.reason, **error.metadata})
            raise error from exc

    def _storage_error(self, exc: OSError, worktree: Path) -> DomainError | None:
        """The domain error of a file system failure that is the workspace's state, not a bug."""
        path = os.fsdecode(exc.filename) if isinstance(exc.filename, str | bytes) else str(worktree)
        metadata = {"workspace_root": str(self.root), "path": path, "errno": errno.errorcode.get(exc.errno or 0, "")}
        if exc.errno in _FULL:
            return ResourceExhausted(
                f"the workspace {self.root} is full: {exc.strerror}", reason="WORKSPACE_FULL", metadata=metadata
            )
        if exc.errno in _NOT_WRITABLE:
            return FailedPrecondition(
                f"the server cannot write {path} in the workspace: {exc.strerror}",
                reason="WORKSPACE_NOT_WRITABLE",
                metadata=metadata,
            )
        return None

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
    if isinstance(exc, git.UntrackedInTheWayError):
        return FailedPrecondition(str(exc), reason="UNTRACKED_IN_THE_WAY", metadata=metadata)
    if isinstance(exc, git.PathEscapeError):
        return InvalidArgument(str(exc), reason="PATH_ESCAPES_WORKSPACE", metadata=metadata)
    return FailedPrecondition(str(exc), reason="GIT_ERROR", metadata=metadata)
