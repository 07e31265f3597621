"""resolve_inside, resolve_repository and validate_branch_name (checked against `git check-ref-format --branch`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from makima.server.git import (
    InvalidRefNameError,
    NotARepositoryError,
    PathEscapeError,
    SourceRepository,
    resolve_inside,
    resolve_repository,
    validate_branch_name,
)
from tests.git.gitcli import git, write

# Names git refuses as branches and names it accepts; each is checked against git itself below.
BRANCH_NAMES = [
    "main",
    "feature/x",
    "a/b/c",
    "a-",
    "a.b",
    "a.git",
    "a./b",
    "a/-b",
    "_",
    "#x",
    "+x",
    "{x}",
    "a@b",
    "x@",
    "@x",
    "a/@",
    "head",
    "HEAD/x",
    "x/HEAD",
    "ünï/é",
    "a/b.lock.c",
    "refs/heads/x",
    "",
    "HEAD",
    "-",
    "-x",
    "a b",
    "a..b",
    "x..",
    "a//b",
    "/a",
    "a/",
    "a.",
    "a/b.",
    ".a",
    "a/.b",
    ".lock",
    "a.lock",
    "a.lock/b",
    "a/.lock",
    ".git",
    "a@{b",
    "@{-1}",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[x",
    "a\\b",
    "a\x7f",
    "a\tb",
    "a\nb",
    ".",
    "..",
]
# git takes '@' as a branch name, but in revision syntax it means HEAD: we refuse it on purpose.
# check-ref-format has no length rule, but a ref's file "<part>.lock" must fit a 255-byte file name:
# we refuse names over 250 bytes of UTF-8 (here 251 and 252 bytes).
STRICTER_THAN_GIT = {"@", "y" * 251, "é" * 126}


def git_accepts_branch(name: str, cwd: Path) -> bool:
    result = subprocess.run(["git", "check-ref-format", "--branch", name], cwd=cwd, capture_output=True, check=False)
    return result.returncode == 0


def ours_accepts(name: str) -> bool:
    try:
        validate_branch_name(name)
    except InvalidRefNameError:
        return False
    return True


def test_branch_names_follow_git_check_ref_format(tmp_path: Path) -> None:
    verdicts = {name: (ours_accepts(name), git_accepts_branch(name, tmp_path)) for name in BRANCH_NAMES}

    disagreements = {name: v for name, v in verdicts.items() if v[0] != v[1]}
    assert disagreements == {}
    assert sum(ours for ours, _ in verdicts.values()) >= 15  # the table really holds accepted names
    assert sum(not ours for ours, _ in verdicts.values()) >= 25


@pytest.mark.parametrize("name", sorted(STRICTER_THAN_GIT))
def test_branch_names_we_refuse_although_git_accepts(name: str, tmp_path: Path) -> None:
    assert git_accepts_branch(name, tmp_path)
    with pytest.raises(InvalidRefNameError) as info:
        validate_branch_name(name)
    assert info.value.metadata == {"name": name}


def test_branch_names_of_250_bytes_are_accepted() -> None:
    assert ours_accepts("y" * 250)
    assert ours_accepts("é" * 125)
    assert ours_accepts("a/" + "y" * 248)


def test_branch_name_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(InvalidRefNameError):
        validate_branch_name("a\udcffb")


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub" / "deep").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, root / "out")  # a link leading out
    os.symlink("sub/deep", root / "in")  # a link that stays inside
    os.symlink("../../outside/x", root / "sub" / "relout")  # relative, out
    return root, outside


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("sub", "sub"),
        ("sub/deep/file.txt", "sub/deep/file.txt"),
        ("sub/../sub/deep", "sub/deep"),
        ("missing/../sub", "sub"),
        (".", "."),
        ("in/new.txt", "sub/deep/new.txt"),
        ("new/dir/not/yet/made", "new/dir/not/yet/made"),
    ],
)
def test_resolve_inside_accepts_paths_that_stay_inside(
    layout: tuple[Path, Path], candidate: str, expected: str
) -> None:
    root, _ = layout

    resolved = resolve_inside(root, candidate)

    assert resolved == (root / expected).resolve()
    assert resolved.is_absolute()


def test_resolve_inside_accepts_an_absolute_path_inside(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    assert resolve_inside(root, root / "sub") == (root / "sub").resolve()


@pytest.mark.parametrize(
    "candidate",
    ["..", "../outside", "sub/../../outside", "out", "out/file", "sub/relout", "in/../../..", "/etc/passwd", "a\x00b"],
)
def test_resolve_inside_refuses_escapes(layout: tuple[Path, Path], candidate: str) -> None:
    root, _ = layout
    with pytest.raises(PathEscapeError):
        resolve_inside(root, candidate)


def test_resolve_inside_refuses_an_absolute_path_through_a_symlink_out(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with pytest.raises(PathEscapeError) as info:
        resolve_inside(root, root / "out" / "x")
    assert "root" in info.value.metadata


def test_resolve_inside_refuses_a_sibling_with_the_root_as_name_prefix(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "ws-other").mkdir()
    with pytest.raises(PathEscapeError):
        resolve_inside(root, "../ws-other")


# -- resolve_repository: nothing git reads of a source repository may lie outside the root ---------


def make_repo(path: Path, *, bare: bool = False, content: str = "inside\n") -> Path:
    """A repository made by the git command line with one commit on main holding `secret.txt`."""
    if bare:
        git(path.parent, "init", "-q", "--bare", "-b", "main", str(path))
        scratch = path.parent / f"{path.name}-scratch"
        git(path.parent, "clone", "-q", str(path), str(scratch))
        write(scratch / "secret.txt", content)
        git(scratch, "add", "-A")
        git(scratch, "commit", "-q", "-m", "one")
        git(scratch, "push", "-q", "origin", "HEAD:main")
        shutil.rmtree(scratch)
        return path
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    write(path / "secret.txt", content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "one")
    return path


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace root with a legitimate repository `root/repos/good`, and a repository outside the root."""
    root = tmp_path / "root"
    make_repo(root / "repos" / "good")
    return root, make_repo(tmp_path / "outside", content="outside\n")


def refused(root: Path, candidate: str, part: str) -> None:
    with pytest.raises(PathEscapeError) as info:
        resolve_repository(root, candidate)
    assert info.value.metadata["part"] == part, info.value.metadata


def test_a_repository_inside_the_root_resolves_to_its_real_directories(places: tuple[Path, Path]) -> None:
    root, _ = places
    os.symlink("good", root / "repos" / "alias")  # a link that stays inside is fine

    source = resolve_repository(root, "repos/alias")

    good = (root / "repos" / "good").resolve()
    assert source == SourceRepository(
        git_dir=good / ".git", common_dir=good / ".git", objects_dir=good / ".git" / "objects", alternates=()
    )


def test_a_git_directory_linked_outside_is_refused(places: tuple[Path, Path]) -> None:
    root, outside = places
    (root / "repos" / "evil").mkdir()
    os.symlink(outside / ".git", root / "repos" / "evil" / ".git")
    refused(root, "repos/evil", ".git")


def test_a_repository_directory_linked_outside_is_refused(places: tuple[Path, Path]) -> None:
    root, outside = places
    os.symlink(outside, root / "repos" / "evil")
    refused(root, "repos/evil", "repository")


@pytest.mark.parametrize("absolute", [True, False])
def test_a_gitdir_file_pointing_outside_is_refused(places: tuple[Path, Path], absolute: bool) -> None:
    root, outside = places
    evil = root / "repos" / "evil"
    evil.mkdir()
    target = str(outside / ".git") if absolute else os.path.relpath(outside / ".git", evil)
    write(evil / ".git", f"gitdir: {target}\n")
    refused(root, "repos/evil", ".git file's gitdir")


def test_a_linked_worktree_inside_the_root_resolves_through_gitdir_and_commondir(places: tuple[Path, Path]) -> None:
    root, _ = places
    good = root / "repos" / "good"
    git(good, "worktree", "add", "-q", "-b", "side", str(root / "repos" / "linked"))

    source = resolve_repository(root, "repos/linked")

    assert source.git_dir == (good / ".git" / "worktrees" / "linked").resolve()
    assert source.common_dir == (good / ".git").resolve()
    assert source.objects_dir == (good / ".git" / "objects").resolve()


def test_a_commondir_pointing_outside_is_refused(places: tuple[Path, Path]) -> None:
    root, outside = places
    good = root / "repos" / "good"
    git(good, "worktree", "add", "-q", "-b", "side", str(root / "repos" / "linked"))
    write(good / ".git" / "worktrees" / "linked" / "commondir", f"{outside / '.git'}\n")
    refused(root, "repos/linked", "commondir")


@pytest.mark.parametrize("relative", [False, True])
def test_alternates_pointing_outside_are_refused(places: tuple[Path, Path], relative: bool) -> None:
    root, outside = places
    objects = root / "repos" / "good" / ".git" / "objects"
    entry = os.path.relpath(outside / ".git" / "objects", objects) if relative else str(outside / ".git" / "objects")
    assert entry.startswith("../..") or not relative
    write(objects / "info" / "alternates", f"# a comment\n{entry}\n")
    refused(root, "repos/good", "objects/info/alternates entry")


def test_nested_alternates_are_followed_and_each_must_stay_inside(places: tuple[Path, Path]) -> None:
    root, outside = places
    good_objects = (root / "repos" / "good" / ".git" / "objects").resolve()
    middle = make_repo(root / "repos" / "middle")
    last = make_repo(root / "repos" / "last")
    middle_objects, last_objects = (middle / ".git" / "objects").resolve(), (last / ".git" / "objects").resolve()
    write(good_objects / "info" / "alternates", "../../../middle/.git/objects\n")  # relative to the objects dir
    write(middle_objects / "info" / "alternates", f"{last_objects}\n{good_objects}\n")  # a cycle too

    assert resolve_repository(root, "repos/good").alternates == (middle_objects, last_objects)

    write(last_objects / "info" / "alternates", f"{outside / '.git' / 'objects'}\n")
    refused(root, "repos/good", "objects/info/alternates entry")


def test_an_objects_directory_linked_outside_is_refused(places: tuple[Path, Path]) -> None:
    root, outside = places
    objects = root / "repos" / "good" / ".git" / "objects"
    shutil.rmtree(objects)
    os.symlink(outside / ".git" / "objects", objects)
    refused(root, "repos/good", "objects directory")


@pytest.mark.parametrize("inner", ["objects/pack", "objects/loose", "refs/heads/main", "packed-refs", "HEAD"])
def test_a_link_inside_the_git_directory_leading_outside_is_refused(places: tuple[Path, Path], inner: str) -> None:
    root, outside = places
    git_dir = root / "repos" / "good" / ".git"
    if inner == "objects/loose":  # one loose object replaced by a link to the outside repository's copy
        loose = next(p for p in (git_dir / "objects").glob("??/*"))
        target = outside / ".git" / "objects" / loose.parent.name / loose.name
        write(target, loose.read_bytes())
        loose.unlink()
        os.symlink(target, loose)
    else:
        if (git_dir / inner).is_dir():
            shutil.rmtree(git_dir / inner)
        elif (git_dir / inner).exists():
            (git_dir / inner).unlink()
        target = outside / ".git" / inner
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.mkdir() if inner.endswith("pack") else write(target, "")
        os.symlink(target, git_dir / inner)

    with pytest.raises(PathEscapeError):
        resolve_repository(root, "repos/good")


def test_a_bare_repository_inside_is_accepted_and_its_alternates_checked(places: tuple[Path, Path]) -> None:
    root, outside = places
    bare = make_repo(root / "repos" / "bare.git", bare=True)

    assert resolve_repository(root, "repos/bare.git").git_dir == bare.resolve()

    write(bare / "objects" / "info" / "alternates", f"{outside / '.git' / 'objects'}\n")
    refused(root, "repos/bare.git", "objects/info/alternates entry")


@pytest.mark.parametrize("setup", ["empty", "junk .git file", "missing"])
def test_a_directory_without_a_repository_is_not_a_repository(places: tuple[Path, Path], setup: str) -> None:
    root, _ = places
    plain = root / "repos" / "plain"
    if setup != "missing":
        plain.mkdir()
    if setup == "junk .git file":
        write(plain / ".git", "not a pointer\n")
    with pytest.raises(NotARepositoryError):
        resolve_repository(root, "repos/plain")


def test_a_repository_that_cannot_be_read_is_not_a_repository(places: tuple[Path, Path]) -> None:
    root, _ = places
    info = root / "repos" / "good" / ".git" / "objects" / "info"
    shutil.rmtree(info)
    (info / "alternates").mkdir(parents=True)  # a directory where git expects a file
    with pytest.raises(NotARepositoryError):
        resolve_repository(root, "repos/good")
