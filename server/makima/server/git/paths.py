"""Checks that keep every path the service reads or writes inside its workspace root.

The rules for what a tree may hold and for branch names are the daemon's too: `makima.worktree.paths`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from makima.worktree.errors import NotARepositoryError, PathEscapeError


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


@dataclass(frozen=True)
class SourceRepository:
    """A repository to clone from, each directory git reads of it resolved to a real path inside the root.

    Made by `resolve_repository`. Cloning reads through these paths only, never through the ones the
    caller named, so no link along those is followed again; the alternates are the whole chain,
    flattened, so the clone needs none of the source's own alternates files.
    """

    # Holds HEAD: the repository's `.git` directory, the target of its `gitdir:` file, or itself if bare.
    git_dir: Path
    # Holds refs and packed-refs: the target of `git_dir/commondir` (a linked worktree), else git_dir.
    common_dir: Path
    objects_dir: Path
    # Every alternate object directory reachable from objects_dir, nested ones too, in git's lookup order.
    alternates: tuple[Path, ...]


def resolve_repository(root: Path, candidate: str | Path) -> SourceRepository:
    """Resolve the repository at `candidate` (relative to `root` or absolute) and everything git reads of it.

    The repository directory, its `.git` (a directory, a link, or a `gitdir:` file with a relative or
    absolute target), `commondir`, the objects directory, every `objects/info/alternates` entry
    (recursively; a relative entry is relative to the objects directory holding it) and every link
    below the ref and object directories must resolve inside `root`: PathEscapeError otherwise, before
    any object is read. A bare repository (objects/ and refs/ without `.git`) is accepted.
    NotARepositoryError if `candidate` holds no repository, or one that cannot be read.
    """
    try:
        return _resolve_repository(root, candidate)
    except OSError as exc:
        raise NotARepositoryError(
            f"{os.fspath(candidate)!r} cannot be read as a git repository: {exc.strerror}", path=os.fspath(candidate)
        ) from None


def _resolve_repository(root: Path, candidate: str | Path) -> SourceRepository:
    top = _inside(root, candidate, part="repository")
    dot_git = top / ".git"
    if os.path.lexists(dot_git):
        real = _inside(root, dot_git, part=".git")
        if real.is_dir():
            git_dir = real
        elif real.is_file():
            git_dir = _inside(root, top / _gitdir_target(real, candidate), part=".git file's gitdir")
        else:
            raise NotARepositoryError(f"{os.fspath(candidate)!r} has a broken .git", path=os.fspath(candidate))
    elif (top / "objects").is_dir() and (top / "refs").is_dir():
        git_dir = top
    else:
        raise NotARepositoryError(f"{os.fspath(candidate)!r} is not a git repository", path=os.fspath(candidate))
    common_dir = git_dir
    if os.path.lexists(git_dir / "commondir"):
        pointer = _inside(root, git_dir / "commondir", part="commondir")
        common = pointer.read_bytes().rstrip(b"\r\n")
        common_dir = _inside(root, git_dir / os.fsdecode(common), part="commondir")
    objects_dir = _inside(root, common_dir / "objects", part="objects directory")
    if not git_dir.is_dir() or not objects_dir.is_dir():
        raise NotARepositoryError(f"{os.fspath(candidate)!r} is not a git repository", path=os.fspath(candidate))
    for ref_file in {git_dir / "HEAD", common_dir / "packed-refs"}:
        if os.path.lexists(ref_file):
            _inside(root, ref_file, part=ref_file.name)
    alternates = _alternates_inside(root, objects_dir)
    for directory in {git_dir / "refs", common_dir / "refs", objects_dir, *alternates}:
        _links_inside(root, directory)
    return SourceRepository(git_dir=git_dir, common_dir=common_dir, objects_dir=objects_dir, alternates=alternates)


def read_alternates(objects_dir: str | Path) -> list[str]:
    """The alternate object directories listed in `objects_dir/info/alternates`, as dulwich reads them.

    Comment lines are skipped; a relative entry is joined to `objects_dir`. No path is resolved.
    """
    try:
        with open(os.path.join(objects_dir, "info", "alternates"), "rb") as f:
            lines = f.read().split(b"\n")
    except (FileNotFoundError, NotADirectoryError):
        return []
    base = os.fsencode(objects_dir)
    return [os.fsdecode(os.path.join(base, line)) for line in lines if line and not line.startswith(b"#")]


def _alternates_inside(root: Path, objects_dir: Path) -> tuple[Path, ...]:
    """Every alternate reachable from `objects_dir`, depth first as git searches them, each inside `root`."""
    found: dict[Path, None] = {}
    pending = [objects_dir]
    while pending:
        directory = pending.pop()
        listing = directory / "info" / "alternates"
        if os.path.lexists(listing):
            _inside(root, listing, part="objects/info/alternates")
        nested = []
        for entry in read_alternates(directory):
            alternate = _inside(root, entry, part="objects/info/alternates entry")
            if alternate != objects_dir and alternate not in found:
                found[alternate] = None
                nested.append(alternate)
        pending.extend(reversed(nested))
    return tuple(found)


def _links_inside(root: Path, directory: Path) -> None:
    """Check that every symlink below `directory` resolves inside `root`, following links to directories."""
    pending, seen = [directory], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_symlink():
                target = _inside(root, entry.path, part=f"link {entry.name!r}")
                if target.is_dir():
                    pending.append(target)
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))


def _gitdir_target(dot_git_file: Path, candidate: str | Path) -> str:
    """The path a `.git` file names (`gitdir: <path>`), read as dulwich reads it."""
    with open(dot_git_file, "rb") as f:
        first = f.readline()
    if not first.startswith(b"gitdir: "):
        raise NotARepositoryError(f"{os.fspath(candidate)!r} has a .git file without gitdir", path=os.fspath(candidate))
    return os.fsdecode(first[len(b"gitdir: ") :].rstrip(b"\r\n"))


def _inside(root: Path, path: str | Path, *, part: str) -> Path:
    try:
        return resolve_inside(root, path)
    except PathEscapeError:
        text = os.fspath(path)
        raise PathEscapeError(
            f"the repository's {part} ({text!r}) leads outside the root", part=part, path=text
        ) from None
