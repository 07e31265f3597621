"""Worktrees as git sees them, the same rules on the service and on every daemon (DESIGN.md section 5).

What a checkpoint holds is what `git add -A` would stage, and a restore writes only the differences
and never through a symlink: the service's worktrees and a daemon's `LocalWorktree` share one
implementation of scanning, ignore rules, the index, tree building, checkout and path safety. Packs
travel between them through `transfer` (have/want, chunked packs) and are verified on arrival by
`verify`, with the same tree-name rule a checkout applies. This package imports only dulwich and
the standard library, so a daemon installs no server, database or gRPC stack to use it.
"""

from makima.worktree._worktree import ChangeKind
from makima.worktree.errors import (
    BranchExistsError,
    ConcurrentUpdateError,
    GitError,
    InvalidPackError,
    InvalidRefNameError,
    NotARepositoryError,
    PathEscapeError,
    RefNotFoundError,
)
from makima.worktree.local import LocalWorktree, OutgoingObjects
from makima.worktree.paths import MAX_BRANCH_NAME_BYTES, check_name, check_tree_path, validate_branch_name
from makima.worktree.transfer import DEFAULT_CHUNK_SIZE, OutgoingPack
from makima.worktree.trees import FileChange
from makima.worktree.verify import PackLimits, StoredPack

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_BRANCH_NAME_BYTES",
    "BranchExistsError",
    "ChangeKind",
    "ConcurrentUpdateError",
    "FileChange",
    "GitError",
    "InvalidPackError",
    "InvalidRefNameError",
    "LocalWorktree",
    "NotARepositoryError",
    "OutgoingObjects",
    "OutgoingPack",
    "PackLimits",
    "PathEscapeError",
    "RefNotFoundError",
    "StoredPack",
    "check_name",
    "check_tree_path",
    "validate_branch_name",
]
