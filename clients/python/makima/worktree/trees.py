"""Trees and commits over any dulwich object store: flatten, build, compare, commit.

Nothing here reads a directory or a repository on disk, so the same functions serve the service's
object store, a worktree's `.git/objects` and a store in memory.
"""

from __future__ import annotations

import hashlib
import time
from binascii import unhexlify
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias, cast

from dulwich.diff_tree import CHANGE_ADD, CHANGE_DELETE, tree_changes
from dulwich.object_store import BaseObjectStore
from dulwich.objects import Commit, ObjectID, Tree, TreeEntry, object_class, parse_tree, valid_hexsha

from makima.worktree._worktree import ChangeKind
from makima.worktree.errors import RefNotFoundError
from makima.worktree.packs import PackedObjects
from makima.worktree.paths import MODE_TREE

# Who makima's commits are by: checkpoints record an agent's work, not a person's.
IDENTITY = b"makima <makima@localhost>"

# A directory while building trees: name -> subdirectory, or (mode, sha) of a file.
_TreeNode: TypeAlias = dict[bytes, "_TreeNode | tuple[int, ObjectID]"]


@dataclass(frozen=True)
class FileChange:
    """One path that differs between two states of a worktree."""

    path: str
    change: ChangeKind


def object_id(sha: str) -> ObjectID:
    """The object id of a full hex sha (any case); RefNotFoundError for anything else."""
    raw = sha.lower().encode("ascii", "replace")
    if len(raw) != 40 or not valid_hexsha(raw):
        raise RefNotFoundError(f"{sha!r} is not a full commit sha", sha=sha)
    return ObjectID(raw)


def commit_of(store: BaseObjectStore, sha: ObjectID) -> Commit:
    """The commit `sha`; RefNotFoundError if `store` lacks it or it is another kind of object."""
    try:
        obj = store[sha]
    except KeyError:
        raise RefNotFoundError(f"unknown commit {sha.decode()}", sha=sha.decode()) from None
    if not isinstance(obj, Commit):
        raise RefNotFoundError(f"{sha.decode()} is a {obj.type_name.decode()}, not a commit", sha=sha.decode())
    return obj


def flatten(store: BaseObjectStore, tree: ObjectID) -> dict[bytes, tuple[int, ObjectID]]:
    """Every non-tree entry below `tree`, by '/'-separated path; RefNotFoundError if a tree is missing.

    Trees are read raw from the packs and parsed by dulwich's C parser, no object built: a restore
    reads every tree of the commit it checks out.
    """
    objects = PackedObjects(store)
    files: dict[bytes, tuple[int, ObjectID]] = {}
    pending = [(b"", tree)]
    while pending:
        prefix, sha = pending.pop()
        try:
            type_num, raw = objects.get_raw(sha)
        except KeyError:
            raise RefNotFoundError(f"tree {sha.decode()} is not in the object store", object=sha.decode()) from None
        if type_num != Tree.type_num:
            cls = object_class(type_num)
            kind = cls.type_name.decode() if cls is not None else f"type {type_num} object"
            raise RefNotFoundError(f"{sha.decode()} is a {kind}, not a tree", object=sha.decode())
        entries = cast(Iterable[tuple[bytes, int, ObjectID]], parse_tree(raw, objects.oid_length))
        for name, mode, child in entries:
            if mode == MODE_TREE:
                pending.append((prefix + name + b"/", child))
            else:
                files[prefix + name] = (mode, child)
    return files


def build_trees(files: Mapping[bytes, tuple[int, ObjectID]]) -> tuple[ObjectID, list[Tree]]:
    """Root tree id and every tree object of `files` ('/'-separated path -> mode, blob sha).

    Each tree is serialized and hashed here (SHA-1, as the worktrees' repositories are) and the
    object made from those bytes: dulwich's own way adds entries one call at a time and serializes
    again to find the id, which costs a snapshot of an unchanged worktree more than its scan.
    """
    root: _TreeNode = {}
    for path, entry in files.items():
        *dirs, name = path.split(b"/")
        node = root
        for part in dirs:
            child = node.setdefault(part, {})
            assert isinstance(child, dict)  # a path cannot be a file and a directory at once
            node = child
        node[name] = entry
    trees: list[Tree] = []

    def build(node: _TreeNode) -> ObjectID:
        # git's order: by name, a tree's name read as if it ended in '/'.
        items: list[tuple[bytes, int, bytes, ObjectID]] = []
        for name, item in node.items():
            if isinstance(item, dict):
                items.append((name + b"/", MODE_TREE, name, build(item)))
            else:
                items.append((name, item[0], name, item[1]))
        items.sort()
        raw = b"".join([b"%o %s\x00%s" % (mode, name, unhexlify(sha)) for _key, mode, name, sha in items])
        sha = ObjectID(hashlib.sha1(b"tree %d\x00%s" % (len(raw), raw)).hexdigest().encode("ascii"))
        tree = Tree.from_raw_string(Tree.type_num, raw, sha=sha)
        assert isinstance(tree, Tree)
        trees.append(tree)
        return sha

    return build(root), trees


def new_commit(tree: ObjectID, parent: ObjectID | None, message: str) -> Commit:
    """A commit of `tree` on top of `parent` (None: a root commit), by makima, dated now."""
    commit = Commit()
    commit.tree = tree
    commit.parents = [] if parent is None else [parent]
    commit.author = commit.committer = IDENTITY
    commit.author_time = commit.commit_time = int(time.time())
    commit.author_timezone = commit.commit_timezone = 0
    text = message if message.endswith("\n") or not message else message + "\n"
    commit.message = text.encode("utf-8", "surrogateescape")
    return commit


def compare_trees(store: BaseObjectStore, base: ObjectID, target: ObjectID) -> list[FileChange]:
    """Files added, modified or deleted from tree `base` to tree `target`, sorted by path.

    A change of kind (file to symlink) counts as modified.
    """
    diff = tree_changes(store, base, target, change_type_same=True)
    return sorted((_tree_change(c.type, c.old, c.new) for c in diff), key=lambda c: c.path)


def compare_files(
    base: Mapping[bytes, tuple[int, ObjectID]], target: Mapping[bytes, tuple[int, ObjectID]]
) -> list[FileChange]:
    """Files added, modified or deleted from one flattened tree to another, sorted by path."""
    changes = [FileChange(path_text(p), "deleted") for p in base if p not in target]
    for path, entry in target.items():
        before = base.get(path)
        if before is None:
            changes.append(FileChange(path_text(path), "added"))
        elif before != entry:
            changes.append(FileChange(path_text(path), "modified"))
    return sorted(changes, key=lambda c: c.path)


def path_text(path: bytes) -> str:
    """A tree path as text; bytes that are not UTF-8 survive the round trip (surrogateescape)."""
    return path.decode("utf-8", "surrogateescape")


def _tree_change(kind: str, old: TreeEntry | None, new: TreeEntry | None) -> FileChange:
    if kind == CHANGE_DELETE:
        assert old is not None and old.path is not None
        return FileChange(path_text(old.path), "deleted")
    assert new is not None and new.path is not None
    return FileChange(path_text(new.path), "added" if kind == CHANGE_ADD else "modified")
