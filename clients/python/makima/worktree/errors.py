"""Errors of worktree and object operations, free of any gRPC or service type: callers decide how to report them.

Every dynamic value of a message is also in `metadata`, so the domain can copy it into an
`ErrorInfo` without parsing the text.
"""

from __future__ import annotations


class GitError(Exception):
    """Base of every expected failure of a git operation."""

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = metadata


class PathEscapeError(GitError):
    """A path leaves the directory it must stay in (`..`, an absolute path elsewhere, a symlink)."""


class NotARepositoryError(GitError):
    """A directory given as a repository holds no git repository (no `.git`, nor a bare layout)."""


class InvalidRefNameError(GitError):
    """A branch name breaks git's ref-name rules (`git check-ref-format --branch`)."""


class BranchExistsError(GitError):
    """The branch, or a ref that conflicts with it on disk (`a` versus `a/b`), already exists."""


class RefNotFoundError(GitError):
    """A ref, tag or commit is unknown to the repository."""


class UntrackedInTheWayError(GitError):
    """A checkout would remove or overwrite what no commit holds: an ignored file or directory, or a
    nested repository, standing where the target tree has something else.

    `metadata["paths"]` lists them, one per line (`metadata["count"]` how many); nothing was changed.
    """


class ConcurrentUpdateError(GitError):
    """A compare-and-swap of a ref lost against another writer, or a lock is held by one."""


class InvalidPackError(GitError):
    """A pack offered to the object store was refused before anything of it was stored.

    `metadata["problem"]` says which check failed (`corrupt`, `too_large`, `too_many_objects`,
    `bad_object`, `unsafe_path`, `bad_mode`, `missing_object`, `missing_commit`); the object, path
    and limit involved are in `object`, `path`, `mode`, `limit` and `value` where they apply.
    """
