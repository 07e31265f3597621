"""What a tree may hold and a branch may be called: git's modes, safe entry names, ref-name rules.

One rule for tree names serves both ends: the service's intake refuses a pack whose trees hold a
name that `check_name` refuses, and a checkout refuses to write such a path (`check_tree_path`),
whether the tree came from the service or from the daemon's own store.
"""

from __future__ import annotations

import unicodedata

from makima.worktree.errors import GitError, InvalidRefNameError

MODE_FILE = 0o100644
MODE_EXECUTABLE = 0o100755
MODE_SYMLINK = 0o120000
MODE_TREE = 0o040000
MODE_GITLINK = 0o160000
# The only modes git itself writes; fsck --strict flags any other (e.g. the legacy 100664).
GIT_MODES = frozenset({MODE_FILE, MODE_EXECUTABLE, MODE_SYMLINK, MODE_TREE, MODE_GITLINK})

# Unicode code points HFS+ ignores in names (git's utf8.c), so `.g\u200cit` is `.git` on a Mac.
_HFS_IGNORED = frozenset(
    "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
)
# Bytes git refuses anywhere in a ref name, besides ASCII control characters (see git-check-ref-format).
_FORBIDDEN_REF_CHARS = frozenset(" ~^:?*[\\\x7f")
# Longest branch name, in UTF-8 bytes. Each '/'-separated part of a ref is a file name, and git
# writes a ref through "<part>.lock": a file name has at most 255 bytes, so a part at most 250. The
# whole name gets the same bound, which also keeps its files far from PATH_MAX (makima.v1 documents it
# on every branch_name field).
MAX_BRANCH_NAME_BYTES = 250


def check_name(name: bytes, mode: int) -> str | None:
    """Why git would refuse to check out a tree entry `name`, or None if it is safe.

    Besides `.`, `..`, separators and NUL, this refuses every spelling of `.git` that some
    filesystem resolves to the repository itself (any case, trailing dots or spaces and NTFS
    streams on Windows, the 8.3 name `git~1`, HFS+ ignored code points on a Mac), and a symlink
    named `.gitmodules`, as git does since CVE-2018-11235.
    """
    if not name:
        return "an empty name"
    if name in (b".", b".."):
        return f"the name {name.decode()!r}"
    if b"/" in name or b"\x00" in name:
        return "a name holding '/' or NUL"
    base = name.split(b":", 1)[0].rstrip(b". ").lower()
    if base in (b".git", b"git~1"):
        return "a name git reads as .git"
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        if not text.isascii():  # ASCII has no ignored code point and is its own NFC form
            text = unicodedata.normalize("NFC", "".join(c for c in text if c not in _HFS_IGNORED))
        folded = text.lower()
        if folded == ".git":
            return "a name HFS+ reads as .git"
        if mode == MODE_SYMLINK and folded.rstrip(". ") in (".gitmodules", "gitmod~1"):
            return "a symlink named .gitmodules"
    return None


def check_tree_path(path: bytes, mode: int) -> None:
    """Refuse a '/'-separated path of a flattened tree that `check_name` refuses at any depth.

    Every directory on the way is checked as a tree entry and the last name with its own `mode`,
    so a checkout never writes outside the worktree or into a repository's `.git`.
    """
    *dirs, name = path.split(b"/")
    for part, part_mode in [*((d, MODE_TREE) for d in dirs), (name, mode)]:
        problem = check_name(part, part_mode)
        if problem is not None:
            text = path.decode("utf-8", "surrogateescape")
            raise GitError(f"tree holds an unsafe path {text!r}: {problem}", path=text)


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
