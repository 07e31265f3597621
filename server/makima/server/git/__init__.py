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
    NotARepositoryError,
    PathEscapeError,
    RefNotFoundError,
)
from makima.server.git.paths import SourceRepository, resolve_inside, resolve_repository, validate_branch_name
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
    "NotARepositoryError",
    "PathEscapeError",
    "RefNotFoundError",
    "Snapshot",
    "SourceRepository",
    "clone_worktree",
    "compare",
    "create_branch",
    "delete_branch",
    "head_commit",
    "init_worktree",
    "publish",
    "resolve_inside",
    "resolve_repository",
    "restore",
    "snapshot",
    "validate_branch_name",
]
