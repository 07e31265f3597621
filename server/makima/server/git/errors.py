"""The git layer's errors, for the domain: one hierarchy with the daemon side, `makima.worktree.errors`."""

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

__all__ = [
    "BranchExistsError",
    "ConcurrentUpdateError",
    "GitError",
    "InvalidPackError",
    "InvalidRefNameError",
    "NotARepositoryError",
    "PathEscapeError",
    "RefNotFoundError",
]
