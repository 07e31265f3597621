"""Rebuild `pyflakes-history.bundle`: real public history to check the service against git itself.

The content is the successive source distributions of pyflakes (MIT licence, by its authors) as
released on PyPI, fetched with `pip download --no-deps --no-binary :all:`; each release is one
commit of the whole unpacked sdist, executable bits kept (bin/pyflakes, setup.py). After them come
a commit that adds a submodule (a gitlink and .gitmodules), one that deletes it, a wide commit that
lays every release side by side (hundreds of files in one commit) and one that removes that again.
Authors and dates are fixed, so the same sdists always give the same commits.

Run: `.venv/bin/python tests/data/make_bundle.py` (needs pip's access to PyPI and the git CLI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PROJECT = "pyflakes"
RELEASES = [
    "0.6.1", "0.7", "0.7.1", "0.7.2", "0.7.3", "0.8", "0.8.1", "0.9.0",
    "0.9.1", "0.9.2", "1.0.0", "1.1.0", "1.2.0", "1.2.1", "1.2.2", "1.2.3",
]  # fmt: skip
BUNDLE = Path(__file__).resolve().parent / "pyflakes-history.bundle"
SUBMODULE = "vendor/pyflakes-0.6.1"


def git(repo: Path, *args: str, day: int = 0) -> str:
    stamp = f"{1_356_998_400 + day * 86_400} +0000"  # 2013-01-01 plus `day` days
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(repo.parent),
        "GIT_AUTHOR_NAME": "makima test data",
        "GIT_AUTHOR_EMAIL": "makima@localhost",
        "GIT_COMMITTER_NAME": "makima test data",
        "GIT_COMMITTER_EMAIL": "makima@localhost",
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_DATE": stamp,
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def unpack(sdist: Path, into: Path) -> None:
    """The sdist's files without its top directory, modes as released."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            name = member.name.split("/", 1)[1] if "/" in member.name else ""
            if not name or not (member.isfile() or member.isdir()):
                continue
            target = into / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
            target.chmod(0o755 if member.mode & 0o100 else 0o644)


def clear(repo: Path) -> None:
    for child in repo.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        downloads = scratch / "sdists"
        for release in RELEASES:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                 "--no-build-isolation", f"{PROJECT}=={release}", "-d", str(downloads)],
                check=True,
            )  # fmt: skip
        repo = scratch / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        day = 0
        for day, release in enumerate(RELEASES):
            (sdist,) = downloads.glob(f"{PROJECT}-{release}.tar.gz")
            clear(repo)
            unpack(sdist, repo)
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", f"{PROJECT} {release}, as released on PyPI (sdist)", day=day)
        first = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
        (repo / ".gitmodules").write_text(f'[submodule "{SUBMODULE}"]\n\tpath = {SUBMODULE}\n\turl = ../{PROJECT}\n')
        git(repo, "update-index", "--add", "--cacheinfo", f"160000,{first},{SUBMODULE}")
        git(repo, "add", ".gitmodules")
        git(repo, "commit", "-q", "-m", f"Add the first release as a submodule at {SUBMODULE}", day=day + 1)
        git(repo, "rm", "-q", "--cached", SUBMODULE)
        git(repo, "rm", "-q", ".gitmodules")
        git(repo, "commit", "-q", "-m", "Delete the submodule", day=day + 2)
        for release in RELEASES:
            (sdist,) = downloads.glob(f"{PROJECT}-{release}.tar.gz")
            unpack(sdist, repo / "releases" / release)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "Every release side by side (a wide commit)", day=day + 3)
        git(repo, "rm", "-q", "-r", "releases")
        git(repo, "commit", "-q", "-m", "Remove the side-by-side releases", day=day + 4)
        git(repo, "fsck", "--strict")
        git(repo, "bundle", "create", "-q", str(BUNDLE), "main")
    print(f"{BUNDLE}: {BUNDLE.stat().st_size} bytes")


if __name__ == "__main__":
    main()
