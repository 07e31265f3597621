"""Checks that keep paths inside the workspace and branch names inside git's ref rules."""

from __future__ import annotations

import os
from pathlib import Path

from makima.server.git.errors import InvalidRefNameError, PathEscapeError

# Bytes git refuses anywhere in a ref name, besides ASCII control characters (see git-check-ref-format).
_FORBIDDEN_REF_CHARS = frozenset(" ~^:?*[\\\x7f")
# Longest branch name, in UTF-8 bytes. Each '/'-separated part of a ref is a file name, and git
# writes a ref through "<part>.lock": a file name has at most 255 bytes, so a part at most 250. The
# whole name gets the same bound, which also keeps its files far from PATH_MAX (makima.v1 documents it
# on every branch_name field).
MAX_BRANCH_NAME_BYTES = 250


def resolve_inside(root: Path, candidate: str | Path) -> Path:
    """Return the absolute, symlink-free path of `candidate` if it stays inside `root`.

    `candidate` is relative to `root` or absolute. Symlinks are resolved along the whole path, so a
    link anywhere that leads out of `root` is caught, not only `..`; PathEscapeError otherwise.
    """
    text = os.fspath(candidate)
    if "\x00" in text or "\x00" in os.fspath(root):
        raise PathEscapeError(f"path {text!r} contains a NUL byte", path=text)
    real_root = Path(os.path.realpath(root))
    joined = Path(text) if os.path.isabs(text) else real_root / text
    resolved = Path(os.path.realpath(joined))
    if resolved != real_root and not resolved.is_relative_to(real_root):
        raise PathEscapeError(f"path {text!r} leaves {str(real_root)!r}", path=text, root=str(real_root))
    return resolved


def validate_branch_name(name: str) -> None:
    """Raise InvalidRefNameError unless `refs/heads/<name>` is a ref name git accepts for a branch.

    The rules are those of `git check-ref-format --branch`, plus `@` alone, which git accepts but
    which means HEAD in revision syntax and so would be a trap for anyone reading the repository.
    """
    problem = _branch_name_problem(name)
    if problem is not None:
        raise InvalidRefNameError(f"invalid branch name {name!r}: {problem}", name=name)


def _branch_name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if size > MAX_BRANCH_NAME_BYTES:
        return f"it is {size} bytes long in UTF-8, more than {MAX_BRANCH_NAME_BYTES}"
    if name in ("@", "HEAD"):
        return f"{name!r} names HEAD"
    if name.startswith("-"):
        return "it starts with '-'"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    for char in name:
        if ord(char) < 0x20 or char in _FORBIDDEN_REF_CHARS:
            return f"it contains {char!r}"
    if name.endswith("/") or name.endswith("."):
        return "it ends with '/' or '.'"
    for component in name.split("/"):
        if not component:
            return "it has an empty component ('//' or a leading '/')"
        if component.startswith("."):
            return "a component starts with '.'"
        if component.endswith(".lock"):
            return "a component ends with '.lock'"
    return None
