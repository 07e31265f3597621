"""The git layer: dulwich operations on the service's worktrees, free of any database, gRPC or domain import.

How a worktree is read and written (scan, ignore rules, index, checkout, path and branch-name rules)
lives in `makima.worktree`, shared with the daemons; this package adds what only the service does
(its workspace's path checks, publishing, branches, clones) and keeps the names the domain uses.
Every function is synchronous; callers run them in a thread under a per-worktree lock. Ref updates
(publish, create_branch) are also safe across processes through git's ref lock files.
"""

from makima.server.git.paths import SourceRepository, resolve_inside, resolve_repository
from makima.server.git.repo import (
    Rewind,
    Snapshot,
    clone_worktree,
    compare,
    create_branch,
    delete_branch,
    head_commit,
    publish,
    restore,
    rewind,
    snapshot,
)
from makima.worktree import ChangeKind, FileChange, validate_branch_name
from makima.worktree.errors import (
    BranchExistsError,
    ConcurrentUpdateError,
    GitError,
    InvalidPackError,
    InvalidRefNameError,
    NotARepositoryError,
    PathEscapeError,
    RefNotFoundError,
    UntrackedInTheWayError,
)
from makima.worktree.repository import init_worktree

__all__ = [
    "BranchExistsError",
    "ChangeKind",
    "ConcurrentUpdateError",
    "FileChange",
    "GitError",
    "InvalidPackError",
    "InvalidRefNameError",
    "NotARepositoryError",
    "PathEscapeError",
    "RefNotFoundError",
    "Rewind",
    "Snapshot",
    "SourceRepository",
    "UntrackedInTheWayError",
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
    "rewind",
    "snapshot",
    "validate_branch_name",
]
