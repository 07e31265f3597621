"""Nested repositories as git's `add -A` sees them: a directory whose `.git` names a repository.

Git records such a directory as a gitlink (mode 160000) pointing at the nested repository's HEAD
commit, and skips it when that HEAD has no commit yet. A `.git` that names no repository (a stray
file, `gitdir:` to nowhere) hides only itself: the directory is scanned like any other. Everything is
read through descriptors without following symlinks; a `gitdir:` or `commondir` leading outside the
worktree is not followed (the directory is then scanned like any other), so a scan never reads
outside the worktree it was given.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass

from dulwich.objects import ObjectID, valid_hexsha
from dulwich.refs import Ref, check_ref_format, read_packed_refs

from makima.worktree import _fs

# git's own limit on symbolic refs followed from HEAD.
_MAX_SYMREF_DEPTH = 5
_GITFILE_PREFIX = b"gitdir: "


@dataclass(frozen=True, slots=True)
class NestedRepository:
    """What a directory's `.git` makes of it: a repository, with its HEAD commit (None while unborn)."""

    head: ObjectID | None


def nested_repository(dir_fd: int, dir_path: bytes, root: bytes) -> NestedRepository | None:
    """The repository whose worktree is the directory `dir_fd` (at `dir_path`), or None if its `.git` names none.

    `root` is the real path of the outer worktree: what a gitfile or commondir names must lie inside it.
    """
    st = _fs.lstat_at(dir_fd, b".git")
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        git_path = dir_path + b"/.git"
        git_fd = _fs.open_dir_at(dir_fd, b".git", create=False)
    elif stat.S_ISREG(st.st_mode):
        git_path, git_fd = _open_gitfile_target(dir_fd, dir_path, st, root)
    else:
        return None
    if git_fd is None:
        return None
    try:
        common_fd = _open_common_dir(git_fd, git_path, root)
        if common_fd is None:
            return None
        try:
            if not (_is_dir(common_fd, b"objects") and _is_dir(common_fd, b"refs")):
                return None
            head = _read_small(git_fd, b"HEAD")
            if head is None or not (head.startswith(b"ref: refs/") or _is_sha(head.strip())):
                return None  # git's validate_headref: not a repository
            return NestedRepository(_resolve_head(git_fd, common_fd, head))
        finally:
            if common_fd != git_fd:
                os.close(common_fd)
    finally:
        os.close(git_fd)


def _open_gitfile_target(dir_fd: int, dir_path: bytes, st: os.stat_result, root: bytes) -> tuple[bytes, int | None]:
    got = _fs.read_entry(dir_fd, b".git", st)
    if got is None or not got[0].startswith(_GITFILE_PREFIX):
        return b"", None
    return _open_inside(dir_path, got[0][len(_GITFILE_PREFIX) :].strip(), root)


def _open_common_dir(git_fd: int, git_path: bytes, root: bytes) -> int | None:
    """The directory of a repository's objects and refs: itself, or what its `commondir` names."""
    st = _fs.lstat_at(git_fd, b"commondir")
    if st is None:
        return git_fd
    got = _fs.read_entry(git_fd, b"commondir", st) if stat.S_ISREG(st.st_mode) else None
    if got is None:
        return None
    return _open_inside(git_path, got[0].strip(), root)[1]


def _open_inside(base: bytes, target: bytes, root: bytes) -> tuple[bytes, int | None]:
    """Open directory `target` (absolute, or relative to `base`) only if its real path is inside `root`."""
    if not target or b"\0" in target:
        return b"", None
    real = os.path.realpath(os.path.join(base, target))
    if not real.startswith(root + b"/"):
        return real, None
    try:
        return real, os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return real, None


def _resolve_head(git_fd: int, common_fd: int, head: bytes) -> ObjectID | None:
    """The commit HEAD names, following symbolic refs in the loose files then packed-refs."""
    value = head.strip()
    for _ in range(_MAX_SYMREF_DEPTH):
        if _is_sha(value):
            return ObjectID(value.lower())
        if not value.startswith(b"ref: "):
            return None
        name = value[len(b"ref: ") :].strip()
        if not check_ref_format(Ref(name)):
            return None
        loose = _read_loose_ref(common_fd, name)
        if loose is None and git_fd != common_fd:
            loose = _read_loose_ref(git_fd, name)
        if loose is None:
            return _packed_ref(common_fd, name)
        value = loose.strip()
    return None


def _read_loose_ref(dir_fd: int, name: bytes) -> bytes | None:
    *dirs, last = name.split(b"/")
    with _fs.DirChain(dir_fd, create=False) as chain:
        fd = chain.get(dirs)
        return None if fd is None else _read_small(fd, last)


def _packed_ref(common_fd: int, name: bytes) -> ObjectID | None:
    data = _read_small(common_fd, b"packed-refs")
    if data is None:
        return None
    for sha, ref in read_packed_refs(io.BytesIO(data)):
        if ref == name and _is_sha(sha):
            return ObjectID(sha.lower())
    return None


def _read_small(dir_fd: int, name: bytes) -> bytes | None:
    st = _fs.lstat_at(dir_fd, name)
    if st is None or not stat.S_ISREG(st.st_mode):
        return None
    got = _fs.read_entry(dir_fd, name, st)
    return None if got is None else got[0]


def _is_dir(dir_fd: int, name: bytes) -> bool:
    st = _fs.lstat_at(dir_fd, name)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _is_sha(value: bytes) -> bool:
    return len(value) == 40 and valid_hexsha(value)
