"""resolve_inside and validate_branch_name, the latter checked against `git check-ref-format --branch`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from makima.server.git import InvalidRefNameError, PathEscapeError, resolve_inside, validate_branch_name

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
