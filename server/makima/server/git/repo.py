"""Worktree operations of the service: checkpoint (snapshot + publish), restore, compare, branch, clone.

All functions are synchronous and take the worktree path; callers serialize calls per worktree.
A checkpoint is split in two so the domain can order it with its database write: `snapshot` only
writes objects (an unreferenced commit is harmless if the database write then fails), `publish`
moves the branch with a compare-and-swap and refreshes the index. How a worktree is read and
written is `makima.worktree`'s, the same for a daemon's worktree; what stays here is the service's
own: its worktrees' alternates, publishing, branches, and cloning a repository of the workspace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dulwich import objectspec
from dulwich.objects import Commit, ObjectID
from dulwich.objectspec import AmbiguousShortId
from dulwich.refs import DiskRefsContainer, Ref, check_ref_format
from dulwich.repo import BaseRepo, Repo

from makima.server.git.paths import SourceRepository, read_alternates
from makima.worktree import FileChange
from makima.worktree._index import IndexEntry
from makima.worktree.errors import BranchExistsError, GitError, RefNotFoundError
from makima.worktree.repository import (
    ObjectDir,
    branch_ref,
    checkout,
    discard_worktree,
    index_for_tree,
    live_files,
    locked,
    move_ref,
    open_repository,
    prepare_empty_dir,
    read_ref,
    read_worktree,
    replace_index,
    store_objects,
)
from makima.worktree.trees import (
    IDENTITY,
    commit_of,
    compare_files,
    compare_trees,
    flatten,
    new_commit,
    object_id,
    path_text,
)

_HEAD = Ref(b"HEAD")


@dataclass(frozen=True)
class Snapshot:
    """A commit of a worktree's content, written but not yet published on its branch."""

    commit_sha: str
    parent_sha: str | None
    tree_sha: str
    # The tree of the parent: equal to `tree_sha` when nothing changed since the branch's head.
    parent_tree_sha: str | None = None
    # The branch's head itself, no commit written: `snapshot(reuse_head=True)` of an unchanged worktree.
    reused: bool = False
    # The stat of every file as the snapshot hashed it, so `publish` refreshes the index and a
    # `rewind` right after knows the worktree without reading the files again. Not part of the
    # value: a Snapshot rebuilt from stored shas also works.
    _index_entries: Mapping[bytes, IndexEntry] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Rewind:
    """What `rewind` did: the files it changed, and the rewind commit it wrote (not yet published)."""

    changes: list[FileChange]
    commit: Snapshot


def clone_worktree(source: SourceRepository, path: Path, *, ref: str | None, branch: str) -> str:
    """Check out `ref` of the repository `source` into a new worktree at `path`, on a new `branch`.

    `source` comes from `paths.resolve_repository`, which kept every directory it names inside the
    workspace root; only those real paths are read. Objects are shared with the source through
    objects/info/alternates, never copied, so a fork of a large repository costs only its checkout.
    The alternates file lists the source's whole chain, flattened: git refuses alternates nested
    more than five deep, and the service reads none beyond that file (see `ObjectDir`). Returns the
    commit sha; RefNotFoundError if `ref` (what `git rev-parse` reads: a branch, a tag, a full or
    abbreviated sha, with `~N`, `^N` or `^{}`; None for the source's HEAD) names no commit. On
    failure `path` is left as it was found.
    """
    new_ref = branch_ref(branch)
    alternates = [os.fspath(p) for p in (source.objects_dir, *source.alternates)]
    source_store = ObjectDir(alternates[0], alternates[1:])
    try:
        refs = DiskRefsContainer(os.fspath(source.common_dir), os.fspath(source.git_dir))
        commit_sha = _resolve_commit(BaseRepo(source_store, refs), ref)
    finally:
        source_store.close()

    created = prepare_empty_dir(path)
    try:
        Repo.init(os.fspath(path), default_branch=branch.encode()).close()
        info_dir = os.path.join(path, ".git", "objects", "info")
        os.makedirs(info_dir, exist_ok=True)
        with open(os.path.join(info_dir, "alternates"), "w", encoding="utf-8") as f:
            f.writelines(alternate + "\n" for alternate in alternates)
        with _open(path) as repo:
            checkout(repo, path, commit_of(repo.object_store, commit_sha).tree)
            repo.refs.add_if_new(
                new_ref, commit_sha, committer=IDENTITY, message=b"makima: worktree from " + commit_sha
            )
    except BaseException:
        discard_worktree(path, created=created)
        raise
    return commit_sha.decode()


def head_commit(path: Path, *, branch: str) -> str | None:
    """The commit `branch` points at, or None while it is unborn."""
    ref = branch_ref(branch)
    with _open(path) as repo:
        sha = read_ref(repo, ref)
    return None if sha is None else sha.decode()


def snapshot(path: Path, *, branch: str, message: str, reuse_head: bool = False) -> Snapshot:
    """Write a commit of the whole worktree on top of `branch`'s head, without moving any ref.

    The commit holds what `git add -A` would stage: tracked files and every untracked file that is
    not ignored (.gitignore at any depth, .git/info/exclude, the user's excludes file); symlinks are
    stored as links, never followed. Neither the branch nor the index changes, so if the caller's
    own write fails the commit simply stays unreferenced. Call `publish` to make it the head.

    With `reuse_head`, a worktree that holds exactly the tree of the branch's head gets no commit
    and nothing is written: the Snapshot returned is the head itself (`reused`, its parent the
    head's first parent), for a caller that only needs what the worktree holds kept somewhere.
    """
    ref = branch_ref(branch)
    with _open(path) as repo:
        parent = read_ref(repo, ref)
        shot = read_worktree(repo, path)
        head = None if parent is None else commit_of(repo.object_store, parent)
        if reuse_head and head is not None and head.tree == shot.tree:
            return Snapshot(
                commit_sha=head.id.decode(),
                parent_sha=head.parents[0].decode() if head.parents else None,
                tree_sha=head.tree.decode(),
                reused=True,
                _index_entries=shot.index,
            )
        commit = new_commit(shot.tree, parent, message)
        store_objects(repo.object_store, [*shot.objects, commit])
        parent_tree = None if head is None else head.tree.decode()
    return Snapshot(
        commit_sha=commit.id.decode(),
        parent_sha=None if parent is None else parent.decode(),
        tree_sha=shot.tree.decode(),
        parent_tree_sha=parent_tree,
        _index_entries=shot.index,
    )


def publish(path: Path, *, branch: str, snapshot: Snapshot, write_index: bool = True) -> None:
    """Make `snapshot` the head of `branch`, point HEAD at the branch and make the index match it.

    With `write_index` False the index is left alone: a rewind publishes its safety snapshot after
    the worktree and index were already restored to an older tree.

    The branch moves only if it still points at the snapshot's parent (or is still unborn): a
    compare-and-swap under git's ref lock, safe across processes; ConcurrentUpdateError if another
    writer moved it first. Publishing a snapshot that already is the head succeeds, so a retried
    call is harmless.
    """
    ref = branch_ref(branch)
    new = object_id(snapshot.commit_sha)
    old = None if snapshot.parent_sha is None else object_id(snapshot.parent_sha)
    with _open(path) as repo:
        commit = commit_of(repo.object_store, new)
        if commit.tree.decode() != snapshot.tree_sha or commit.parents != ([] if old is None else [old]):
            raise GitError(f"snapshot does not describe commit {snapshot.commit_sha}", commit_sha=snapshot.commit_sha)
        move_ref(repo, ref, old=old, new=new, message=b"makima: checkpoint " + new)
        if repo.refs.read_ref(_HEAD) != b"ref: " + ref:
            locked(lambda: repo.refs.set_symbolic_ref(_HEAD, ref), what="HEAD")
        if not write_index:
            return
        if snapshot._index_entries is not None:
            # Made by `snapshot` for exactly this tree (checked above): no need to read the tree.
            entries = snapshot._index_entries
        else:
            entries = index_for_tree(repo, commit.tree)
        replace_index(repo, entries, tree=commit.tree)


def restore(path: Path, *, commit_sha: str, force: bool = False) -> list[FileChange]:
    """Make the worktree and the index hold exactly the tree of `commit_sha`; refs do not move.

    Only the differences are applied: changed files rewritten, files absent from the commit removed
    (ignored files are left alone) with the directories they leave empty, missing files brought back.
    A symlink or hard link planted in the worktree never carries a write outside it: only a regular
    file with no other link is written over, anything else is replaced. What no commit holds (an
    ignored file or directory, a nested repository) standing where the commit has something else
    refuses the restore with UntrackedInTheWayError, nothing changed, unless `force` removes it.
    Returns what changed, relative to the worktree before.
    """
    with _open(path) as repo:
        result = checkout(repo, path, commit_of(repo.object_store, object_id(commit_sha)).tree, force=force)
    return [FileChange(path_text(p), kind) for p, kind in result.changes]


def rewind(
    path: Path, *, commit_sha: str, parent_sha: str, message: str, force: bool = False, worktree: Snapshot | None = None
) -> Rewind:
    """`restore` the tree of `commit_sha`, then write a commit of it on top of `parent_sha`, moving no ref.

    The commit is a rewind's new head: its tree is the target's, its parent the safety commit, so
    history stays linear. `publish` it (after the parent) with `write_index` False: the restore
    wrote the index. `worktree` is a `snapshot` of the worktree taken just before under the same
    lock (the safety snapshot): the restore then starts from what it read instead of reading
    every file's stat again. Errors as `restore`'s, nothing changed.
    """
    with _open(path) as repo:
        store = repo.object_store
        tree = commit_of(store, object_id(commit_sha)).tree
        parent = commit_of(store, object_id(parent_sha)).id
        current = None if worktree is None else worktree._index_entries
        result = checkout(repo, path, tree, force=force, current=current)
        commit = new_commit(tree, parent, message)
        store_objects(store, [commit])
    changes = [FileChange(path_text(p), kind) for p, kind in result.changes]
    made = Snapshot(commit_sha=commit.id.decode(), parent_sha=parent_sha, tree_sha=tree.decode())
    return Rewind(changes=changes, commit=made)


def compare(path: Path, *, base_sha: str, target_sha: str | None) -> list[FileChange]:
    """Files added, modified or deleted from commit `base_sha` to `target_sha`, sorted by path.

    With `target_sha` None the target is the live worktree, as `snapshot` would record it now
    (ignored files excluded). A change of kind (file to symlink) counts as modified.
    """
    with _open(path) as repo:
        store = repo.object_store
        base_tree = commit_of(store, object_id(base_sha)).tree
        if target_sha is not None:
            return compare_trees(store, base_tree, commit_of(store, object_id(target_sha)).tree)
        return compare_files(flatten(store, base_tree), live_files(repo, path))


def create_branch(path: Path, *, name: str, commit_sha: str) -> str:
    """Create branch `name` at `commit_sha`; returns its full ref name (`refs/heads/<name>`).

    InvalidRefNameError for a name git refuses, RefNotFoundError for an unknown commit,
    BranchExistsError if the branch exists or clashes with one on disk (`a` versus `a/b`).
    """
    ref = branch_ref(name)
    sha = object_id(commit_sha)
    with _open(path) as repo:
        commit_of(repo.object_store, sha)
        for existing in repo.refs.allkeys():
            if existing.startswith(ref + b"/") or ref.startswith(existing + b"/"):
                raise BranchExistsError(
                    f"branch {name!r} clashes with {existing.decode(errors='replace')!r}",
                    name=name,
                    existing=existing.decode(errors="replace"),
                )
        try:
            added = locked(
                lambda: repo.refs.add_if_new(ref, sha, committer=IDENTITY, message=b"makima: branch at " + sha),
                what=ref.decode(),
            )
        except (IsADirectoryError, NotADirectoryError):
            added = False  # another process made a clashing branch since the check above
        if not added:
            raise BranchExistsError(f"branch {name!r} already exists", name=name)
    return ref.decode()


def delete_branch(path: Path, *, name: str, commit_sha: str) -> None:
    """Remove branch `name` if it still points at `commit_sha` (undo of a `create_branch`)."""
    ref = branch_ref(name)
    with _open(path) as repo:
        locked(lambda: repo.refs.remove_if_equals(ref, object_id(commit_sha)), what=ref.decode())


# -- helpers -------------------------------------------------------------------------------------


def _open(path: Path) -> Repo:
    """A service worktree, reading the alternates its own file lists (each without alternates of its own)."""
    return open_repository(path, alternates=read_alternates(os.path.join(path, ".git", "objects")))


def _resolve_commit(repo: BaseRepo, ref: str | None) -> ObjectID:
    """The commit `ref` names as `git rev-parse <ref>^{commit}` reads it (None: HEAD).

    A name is a full or abbreviated sha (at least 4 digits, refused if ambiguous), HEAD-like names,
    or a ref looked up in git's order (refs/, refs/tags/, refs/heads/, refs/remotes/), followed by
    any of `~N`, `^N`, `^{}` and `^{commit}`. Every ref name read must pass git's ref format rules, so
    a hostile name such as '../../x' is never read as a path; what git would read outside refs/
    (`:path`, `@{...}` reflogs, ranges) is refused. RefNotFoundError for anything that names no commit.
    """
    text = "HEAD" if ref is None else ref
    spec = _REVISION.fullmatch(text.encode("utf-8", "surrogateescape"))
    if spec is None:
        raise RefNotFoundError(f"unknown ref {text!r}", ref=text)
    try:
        commit = objectspec.parse_commit(repo, _base_name(repo, spec["base"], text))
        for step in _STEP.finditer(spec["steps"]):
            commit = _walk_step(repo, commit, step)
    except AmbiguousShortId:
        raise RefNotFoundError(f"short sha {text!r} is ambiguous", ref=text) from None
    except (KeyError, ValueError, IndexError):
        raise RefNotFoundError(f"unknown ref {text!r}, or it names no commit", ref=text) from None
    return commit.id


# A revision: a name, then steps to a parent or a peel (git's `~N`, `^N`, `^{}`, `^{commit}`).
_REVISION = re.compile(rb"(?P<base>[^~^]+)(?P<steps>(?:~[0-9]*|\^[0-9]*|\^\{(?:commit)?\})*)")
_STEP = re.compile(rb"~(?P<back>[0-9]*)|\^\{(?:commit)?\}|\^(?P<parent>[0-9]*)")
# Names git reads directly in the repository directory, as HEAD (git's rule: upper case and '_').
_PSEUDO_REF = re.compile(rb"[A-Z_]+")
_HEX = re.compile(rb"[0-9a-fA-F]{4,40}")


def _base_name(repo: BaseRepo, base: bytes, text: str) -> bytes:
    """The full ref or the (abbreviated) sha that `base` stands for, checked before anything is read."""
    if len(base) == 40 and _HEX.fullmatch(base):
        return base.lower()
    candidates = [base] if _PSEUDO_REF.fullmatch(base) or base.startswith(b"refs/") else []
    candidates += [b"refs/" + base, b"refs/tags/" + base, b"refs/heads/" + base, b"refs/remotes/" + base]
    candidates.append(b"refs/remotes/" + base + b"/HEAD")
    for candidate in candidates:
        ok = (candidate == base and _PSEUDO_REF.fullmatch(base)) or check_ref_format(Ref(candidate))
        if ok and read_ref(repo, Ref(candidate)) is not None:
            return candidate
    if _HEX.fullmatch(base):
        return base.lower()
    raise RefNotFoundError(f"unknown ref {text!r}", ref=text)


def _walk_step(repo: BaseRepo, commit: Commit, step: re.Match[bytes]) -> Commit:
    """One `~N` (N first parents back), `^N` (the N-th parent, ^0 itself) or peel (a commit is one already)."""
    if step["back"] is not None:
        for _ in range(int(step["back"] or 1)):
            commit = _parent(repo, commit, 1)
    elif step["parent"] is not None:
        number = int(step["parent"] or 1)
        commit = commit if number == 0 else _parent(repo, commit, number)
    return commit


def _parent(repo: BaseRepo, commit: Commit, number: int) -> Commit:
    parent = repo.object_store[commit.parents[number - 1]]  # IndexError: no such parent
    if not isinstance(parent, Commit):
        raise ValueError("a parent that is not a commit")
    return parent
