"""The git layer: dulwich operations on task worktrees, free of any database, gRPC or domain import.

Every function is synchronous; callers run them in a thread under a per-worktree lock. Ref updates
(publish, create_branch) are also safe across processes through git's ref lock files.
"""

from makima.server.git._worktree import ChangeKind
from makima.server.git.errors import (
    BranchExistsError,
    ConcurrentUpdateError,
    GitError,
    InvalidRefNameError,
    PathEscapeError,
    RefNotFoundError,
)
from makima.server.git.paths import resolve_inside, validate_branch_name
from makima.server.git.repo import (
    FileChange,
    Snapshot,
    clone_worktree,
    compare,
    create_branch,
    delete_branch,
    head_commit,
    init_worktree,
    publish,
    restore,
    snapshot,
)

__all__ = [
    "BranchExistsError",
    "ChangeKind",
    "ConcurrentUpdateError",
    "FileChange",
    "GitError",
    "InvalidRefNameError",
    "PathEscapeError",
    "RefNotFoundError",
    "Snapshot",
    "clone_worktree",
    "compare",
    "create_branch",
    "delete_branch",
    "head_commit",
    "init_worktree",
    "publish",
    "resolve_inside",
    "restore",
    "snapshot",
    "validate_branch_name",
]
