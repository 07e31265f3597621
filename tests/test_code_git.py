"""Git fidelity through the real server (issue 12): the git command line run beside the service must
agree with it on nested repositories, `.git` files, rewinds, refs, forks, and real public history."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
import zlib
from pathlib import Path

import grpc

from makima.server.app import App
from makima.v1 import history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.helpers import Api, append_messages, create_task, fails

BUNDLE = Path(__file__).resolve().parent / "data" / "pyflakes-history.bundle"
EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)
CODE = task_fork_pb2.REWIND_MODE_CODE
_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: str | Path, *args: str) -> str:
    env = {**os.environ, **_IDENTITY}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)


def nested_repository(path: Path, files: dict[str, str]) -> str:
    """A repository at `path` with one commit of `files`; returns its HEAD."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    write(path, files)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "nested")
    return git(path, "rev-parse", "HEAD").strip()


def tree_sha(repo: Path, rev: str) -> str:
    return git(repo, "rev-parse", f"{rev}^{{tree}}").strip()


async def checkpoint(api: Api, task_id: str, message: str = "") -> resources_pb2.Checkpoint:
    request = task_fork_pb2.CreateCheckpointRequest(task_id=task_id, message=message)
    return (await api.tasks.CreateCheckpoint(request, metadata=api.md)).checkpoint


async def checkpoints_of(api: Api, task_id: str) -> list[resources_pb2.Checkpoint]:
    request = history_pb2.ListCheckpointsRequest(task_id=task_id, page_size=1000)
    return list((await api.history.ListCheckpoints(request, metadata=api.md)).checkpoints)


async def rewind(
    api: Api, task_id: str, checkpoint_id: str, *, force: bool = False
) -> task_fork_pb2.RewindTaskResponse:
    request = task_fork_pb2.RewindTaskRequest(task_id=task_id, checkpoint_id=checkpoint_id, mode=CODE, force=force)
    return await api.tasks.RewindTask(request, metadata=api.md)


def source_repository(server: App) -> Path:
    """A fresh directory for a repository under the workspace root."""
    path = Path(server.settings.workspace_root).resolve() / "sources" / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


async def test_a_git_file_naming_no_repository_hides_only_itself(api: Api) -> None:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    write(path, {"sub/.git": "gitdir: ../nowhere\n", "sub/other.txt": "kept\n"})

    made = await checkpoint(api, task.id)

    assert git(path, "ls-tree", "-r", "--name-only", made.commit_sha).split() == ["sub/other.txt"]
    assert git(path, "status", "--porcelain") == ""
    assert git(path, "fsck", "--strict") == ""


async def test_a_nested_repository_is_a_gitlink_to_its_head(api: Api) -> None:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    head = nested_repository(path / "vendor" / "lib", {"lib.py": "x = 1\n"})
    write(path, {"app.py": "import lib\n"})
    (path / "fresh").mkdir()
    git(path / "fresh", "init", "-q")  # no commit: left out, as `git add -A` leaves it

    made = await checkpoint(api, task.id)

    listed = git(path, "ls-tree", "-r", made.commit_sha).splitlines()
    assert [line.split("\t")[1] for line in listed] == ["app.py", "vendor/lib"]
    assert f"160000 commit {head}\tvendor/lib" in listed
    assert git(path, "status", "--porcelain") == "?? fresh/\n"
    assert git(path, "diff", made.commit_sha) == ""
    assert git(path, "fsck", "--strict") == ""


async def test_a_rewind_moves_the_branch_to_a_commit_of_the_target_and_leaves_status_clean(api: Api) -> None:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    write(path, {"a.txt": "target\n", "gone/later.txt": "target\n"})
    target = await checkpoint(api, task.id, "target")
    write(path, {"a.txt": "after\n", "new.txt": "after\n"})
    shutil.rmtree(path / "gone")

    done = await rewind(api, task.id, target.id)

    head = done.rewind_checkpoint
    assert head.kind == resources_pb2.CHECKPOINT_KIND_REWIND
    assert git(path, "status", "--porcelain") == ""
    assert git(path, "rev-parse", "HEAD").strip() == head.commit_sha == done.task.head_commit_sha
    assert git(path, "rev-parse", "HEAD^").strip() == done.safety_checkpoint.commit_sha
    assert git(path, "rev-list", "--count", "--merges", "HEAD").strip() == "0"  # linear
    assert tree_sha(path, "HEAD") == tree_sha(path, target.commit_sha)
    assert git(path, "diff", target.commit_sha, "HEAD") == ""
    assert git(path, "diff", "--name-only", done.safety_checkpoint.commit_sha, "HEAD").split() == [
        "a.txt",
        "gone/later.txt",
        "new.txt",
    ]
    assert git(path, "fsck", "--strict") == ""
    listed = await checkpoints_of(api, task.id)
    # Newest first; the two of one rewind share its time, in no set order.
    assert {c.kind for c in listed[:2]} == {resources_pb2.CHECKPOINT_KIND_REWIND, resources_pb2.CHECKPOINT_KIND_SAFETY}


async def test_a_rewind_of_an_unchanged_worktree_keeps_its_head_checkpoint_as_the_safety_one(api: Api) -> None:
    """Nothing to save: the checkpoint of the head is the safety checkpoint, and no commit is added."""
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    write(path, {"a.txt": "target\n"})
    target = await checkpoint(api, task.id, "target")
    write(path, {"a.txt": "later\n", "b.txt": "later\n"})
    later = await checkpoint(api, task.id, "later")
    count = len(await checkpoints_of(api, task.id))

    done = await rewind(api, task.id, target.id)

    assert done.safety_checkpoint.id == later.id
    assert git(path, "rev-parse", "HEAD^").strip() == later.commit_sha
    assert git(path, "status", "--porcelain") == "" and tree_sha(path, "HEAD") == tree_sha(path, target.commit_sha)
    assert len(await checkpoints_of(api, task.id)) == count + 1  # the REWIND checkpoint only
    # Back to the later state: the rewind commit, unchanged since, is the safety checkpoint now.
    again = await rewind(api, task.id, later.id)
    assert again.safety_checkpoint.id == done.rewind_checkpoint.id
    assert (path / "b.txt").read_text() == "later\n"


async def test_a_rewind_refuses_to_delete_a_nested_repository_or_an_ignored_directory_unless_forced(api: Api) -> None:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    write(path, {".gitignore": "cache/\n", "lib": "a file in the target\n", "cache": "a file in the target\n"})
    target = await checkpoint(api, task.id, "target")
    (path / "lib").unlink()
    (path / "cache").unlink()
    nested_head = nested_repository(path / "lib", {"code.py": "history of its own\n"})
    write(path, {"cache/data.bin": "ignored, in no checkpoint\n"})
    later = await checkpoint(api, task.id, "later")
    branch_before = git(path, "rev-parse", "HEAD").strip()

    failure = await fails(rewind(api, task.id, target.id), grpc.StatusCode.FAILED_PRECONDITION)

    assert failure.reason == "UNTRACKED_IN_THE_WAY"
    assert failure.metadata["paths"].split("\n") == ["cache", "lib"] and failure.metadata["count"] == "2"
    assert "'cache'" in failure.message and "'lib'" in failure.message
    # Nothing changed: no checkpoint, the branch, the worktree and the nested history as they were.
    assert (await checkpoints_of(api, task.id))[0].id == later.id  # newest first
    assert git(path, "rev-parse", "HEAD").strip() == branch_before == later.commit_sha
    assert git(path / "lib", "rev-parse", "HEAD").strip() == nested_head
    assert (path / "cache" / "data.bin").read_text() == "ignored, in no checkpoint\n"
    assert git(path, "status", "--porcelain") == ""

    done = await rewind(api, task.id, target.id, force=True)

    assert done.code_rewound
    assert (path / "lib").read_text() == (path / "cache").read_text() == "a file in the target\n"
    assert git(path, "status", "--porcelain") == ""
    assert tree_sha(path, "HEAD") == tree_sha(path, target.commit_sha)


async def test_a_rewind_keeps_what_does_not_stand_in_the_way(api: Api) -> None:
    """Ignored files and nested repositories elsewhere are left alone, so the rewind needs no force."""
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    write(path, {".gitignore": "*.log\n", "a.txt": "target\n"})
    target = await checkpoint(api, task.id, "target")
    write(path, {"a.txt": "later\n", "run.log": "ignored\n"})
    head = nested_repository(path / "vendor" / "lib", {"x.py": "x\n"})
    await checkpoint(api, task.id, "later")

    await rewind(api, task.id, target.id)

    assert (path / "run.log").read_text() == "ignored\n"
    assert git(path / "vendor" / "lib", "rev-parse", "HEAD").strip() == head  # a populated repository stays
    assert (path / "a.txt").read_text() == "target\n"


async def test_worktree_refs_resolve_as_git_rev_parse_does(api: Api, server: App) -> None:
    source = source_repository(server)
    git(source, "init", "-q", "-b", "main")
    for n in range(3):
        write(source, {"f.txt": f"v{n}\n"})
        git(source, "add", "-A")
        git(source, "commit", "-q", "-m", f"c{n}")
        if n == 0:
            git(source, "tag", "-a", "-m", "release", "v1.0")
    short = git(source, "rev-parse", "--short", "HEAD~2").strip()

    for ref in ("HEAD~1", "main^", "v1.0^{}", short, "main~1^{commit}"):
        spec = resources_pb2.WorktreeSpec(
            source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=str(source), ref=ref
        )
        task = await create_task(api, worktree=spec)
        assert task.head_commit_sha == git(source, "rev-parse", f"{ref}^{{commit}}").strip(), ref
        assert git(task.worktree_path, "status", "--porcelain") == ""

    for ref in ("HEAD~3", "main:f.txt", "main@{0}", "HEAD~1..HEAD", "v1.0^{tree}", "../../etc"):
        spec = resources_pb2.WorktreeSpec(
            source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=str(source), ref=ref
        )
        failure = await fails(
            api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=spec), metadata=api.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert failure.fields == ["worktree.ref"], ref


async def test_a_fork_branch_starts_at_the_commit_the_response_names(api: Api) -> None:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    (initial,) = await checkpoints_of(api, task.id)
    assert initial.kind == resources_pb2.CHECKPOINT_KIND_INITIAL
    write(path, {"a.txt": "at the checkpoint\n"})
    point = await checkpoint(api, task.id, "point")

    forked = await api.tasks.ForkTask(
        task_fork_pb2.ForkTaskRequest(task_id=task.id, checkpoint_id=point.id), metadata=api.md
    )

    fork_path = Path(forked.task.worktree_path)
    assert git(fork_path, "rev-parse", f"refs/heads/{forked.task.branch}").strip() == forked.commit_sha
    assert forked.commit_sha == point.commit_sha == forked.task.head_commit_sha
    (fork_initial,) = await checkpoints_of(api, forked.task.id)
    assert (fork_initial.kind, fork_initial.commit_sha) == (resources_pb2.CHECKPOINT_KIND_INITIAL, point.commit_sha)
    assert git(fork_path, "status", "--porcelain") == ""
    assert git(fork_path, "log", "--format=%H", "-1").strip() == point.commit_sha  # no empty commit on top


async def test_code_at_a_message_is_never_a_safety_checkpoint(api: Api) -> None:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    await append_messages(api, task.id, 0, "m0")
    write(path, {"a.txt": "kept code\n"})
    kept = await checkpoint(api, task.id, "kept")
    write(path, {"a.txt": "code rewound away from\n"})
    # A conversation-only rewind to an earlier point, then a code rewind: its safety checkpoint holds
    # the code rewound away from, at a message count of 1.
    await api.tasks.RewindTask(
        task_fork_pb2.RewindTaskRequest(task_id=task.id, checkpoint_id=kept.id, mode=CODE), metadata=api.md
    )
    safety = [c for c in await checkpoints_of(api, task.id) if c.kind == resources_pb2.CHECKPOINT_KIND_SAFETY]
    assert len(safety) == 1 and safety[0].message_count == 1
    await append_messages(api, task.id, 1, "m1")

    forked = await api.tasks.ForkTask(task_fork_pb2.ForkTaskRequest(task_id=task.id, message_index=0), metadata=api.md)

    assert forked.commit_sha != safety[0].commit_sha
    assert (Path(forked.task.worktree_path) / "a.txt").read_text() == "kept code\n"

    write(path, {"a.txt": "edited again\n"})
    rewound = await api.supervisor.RewindConversation(
        supervisor_pb2.RewindConversationRequest(task_id=task.id, to_message_index=0, rewind_code=True),
        metadata=api.md,
    )
    assert rewound.code_rewound
    assert rewound.code_checkpoint.kind != resources_pb2.CHECKPOINT_KIND_SAFETY
    assert (path / "a.txt").read_text() == "kept code\n"
    assert git(path, "status", "--porcelain") == ""


async def test_real_history_replays_as_checkpoints_with_the_same_trees(api: Api, server: App) -> None:
    """The commits of tests/data/pyflakes-history.bundle, made by tests/data/make_bundle.py from the
    successive pyflakes sdists released on PyPI (with executable bits), then a submodule added and
    deleted and a wide commit: each commit's tree is laid in a task's worktree and checkpointed
    through the server, and every checkpoint's tree hash must equal the original commit's."""
    source = source_repository(server)
    git(source.parent, "clone", "-q", "-b", "main", str(BUNDLE), str(source))
    commits = git(source, "rev-list", "--reverse", "HEAD").split()
    assert len(commits) >= 20
    modes = {line.split()[0] for c in commits for line in git(source, "ls-tree", "-r", c).splitlines()}
    assert modes == {"100644", "100755", "160000"}
    spec = resources_pb2.WorktreeSpec(
        source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=str(source), ref=commits[0]
    )
    task = await create_task(api, "replay", worktree=spec)
    path = Path(task.worktree_path)
    assert task.head_commit_sha == commits[0]

    for commit in commits[1:]:
        for child in path.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        archive = subprocess.run(["git", "archive", commit], cwd=source, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
        for line in git(source, "ls-tree", "-r", commit).splitlines():
            meta, name = line.split("\t")
            if meta.startswith("160000"):  # a submodule checked out: its own repository at the gitlink
                shutil.rmtree(path / name)
                git(source.parent, "clone", "-q", "--no-checkout", str(source), str(path / name))
                git(path / name, "checkout", "-q", "--detach", meta.split()[2])

        made = await checkpoint(api, task.id, commit)

        assert tree_sha(path, made.commit_sha) == tree_sha(source, commit), commit
        assert git(path, "status", "--porcelain") == "", commit
    # The source's later commits, shared through alternates, are dangling here: not an error.
    assert git(path, "fsck", "--strict", "--no-dangling") == ""
    history = git(path, "rev-list", "--count", "HEAD").strip()
    assert int(history) == len(commits)


async def test_what_the_object_store_refuses_is_not_checkpointed(api: Api) -> None:
    """A name some file system reads as .git, or an object the agent corrupted in the worktree's
    repository: the checkpoint is refused (WORKTREE_NOT_STORABLE) and nothing is recorded."""
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    write(path, {"a.txt": "good\n"})
    await checkpoint(api, task.id, "good")
    before = len(await checkpoints_of(api, task.id))
    write(path, {"GIT~1/config": "a name Windows reads as .git\n"})
    unsafe = await fails(checkpoint(api, task.id), grpc.StatusCode.FAILED_PRECONDITION, reason="WORKTREE_NOT_STORABLE")
    shutil.rmtree(path / "GIT~1")
    # The agent commits with git on the task's branch, then overwrites a loose object of it.
    write(path, {"b.txt": "agent\n"})
    git(path, "add", "b.txt")
    git(path, "commit", "-q", "-m", "by the agent")
    blob = git(path, "rev-parse", "HEAD:b.txt").strip()
    loose = path / ".git" / "objects" / blob[:2] / blob[2:]
    loose.chmod(0o644)
    loose.write_bytes(zlib.compress(b"blob 5\x00evil\n"))
    corrupt = await fails(checkpoint(api, task.id), grpc.StatusCode.FAILED_PRECONDITION, reason="WORKTREE_NOT_STORABLE")

    assert (unsafe.metadata["problem"], unsafe.metadata["path"]) == ("unsafe_path", "GIT~1")
    assert (corrupt.metadata["problem"], corrupt.metadata["object"]) == ("bad_object", blob)
    assert len(await checkpoints_of(api, task.id)) == before


async def test_a_rewind_whose_safety_checkpoint_the_object_store_refuses_changes_nothing(api: Api) -> None:
    """The safety commit is stored before any file changes: its refusal fails the rewind, nothing is
    recorded and the worktree keeps every change (no undo could put GIT~1 back: no checkout writes a
    name read as .git)."""
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    write(path, {"a.txt": "target\n"})
    target = await checkpoint(api, task.id, "target")
    write(path, {"a.txt": "since\n", "GIT~1/config": "a name Windows reads as .git\n"})
    before, head = len(await checkpoints_of(api, task.id)), git(path, "rev-parse", "HEAD").strip()

    refused = await fails(
        rewind(api, task.id, target.id), grpc.StatusCode.FAILED_PRECONDITION, reason="WORKTREE_NOT_STORABLE"
    )

    assert (refused.metadata["problem"], refused.metadata["path"]) == ("unsafe_path", "GIT~1")
    assert len(await checkpoints_of(api, task.id)) == before
    assert git(path, "rev-parse", "HEAD").strip() == head
    assert (path / "a.txt").read_text() == "since\n"
    assert (path / "GIT~1" / "config").read_text() == "a name Windows reads as .git\n"
