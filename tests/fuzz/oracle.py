"""The properties every fuzzed call must keep, checked with real reads of the database and the disk.

- The status is never INTERNAL, UNKNOWN, UNAVAILABLE or DATA_LOSS (the database is up), nor
  DEADLINE_EXCEEDED unless the RPC holds the call (a long-poll or a server stream); a call with a
  forged key never succeeds.
- After a failed call the owner's state is what it was: every row of every owner-scoped table (read
  through the server's own engine) and every file of the owner's worktrees (content hashes; git's
  content-addressed `.git/objects` aside: an unreferenced object is invisible), plus the names in
  the workspace, so a worktree left behind shows.
- No call of the owner changes anything of the other owner, and no answer (messages, error message,
  error details, base64 payloads such as page tokens) names the other owner's marker or one of its
  ids that the request did not carry; the owner's own rows and files never hold the marker either.
- The health service answers SERVING after the call.

With MAKIMA_FUZZ_COLLECT=<file>, violations are appended to the file as JSON lines instead of
failing the test, to list every distinct failure of a run at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from makima.server.store.engine import Database
from makima.server.store.models import metadata
from tests.fuzz.pool import Pool, id_kind, is_token_field
from tests.fuzz.rpcs import Answer, Rpc, invoke
from tests.fuzz.strategies import CallPlan

COLLECT_ENV = "MAKIMA_FUZZ_COLLECT"
FORBIDDEN_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}
)
FORGED_CODES = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
# A file modified this recently is hashed again even if its stat is unchanged (as git does).
RACY_NANOS = 2_000_000_000
_B64 = re.compile(r"^[A-Za-z0-9_\-+/]{8,}={0,2}$")


@dataclass
class State:
    """One owner's rows and worktree files at one moment."""

    rows: dict[str, list[tuple[Any, ...]]]
    files: dict[str, str]
    listing: tuple[str, ...]
    # Where the forbidden marker was found (table names, file paths).
    marked: list[str] = field(default_factory=list)

    def same_as(self, other: State) -> bool:
        return (self.rows, self.files, self.listing) == (other.rows, other.files, other.listing)

    def diff(self, after: State) -> str:
        """What changed, briefly: the tables and files that differ, with one changed row each."""
        out = []
        for table in sorted(set(self.rows) | set(after.rows)):
            old, new = self.rows.get(table, []), after.rows.get(table, [])
            if old != new:
                added = [r for r in new if r not in old]
                removed = [r for r in old if r not in new]
                example = repr((added or removed)[0])[:160]
                out.append(f"{table} +{len(added)}/-{len(removed)} rows (e.g. {example})")
        for path in sorted(set(self.files) | set(after.files)):
            if self.files.get(path) != after.files.get(path):
                out.append(f"file {path}: {self.files.get(path)} -> {after.files.get(path)}")
        if self.listing != after.listing:
            out.append(f"workspace entries {sorted(set(after.listing) ^ set(self.listing))}")
        return "; ".join(out[:6]) + (f" (+{len(out) - 6} more)" if len(out) > 6 else "")


class StateReader:
    """Reads an owner's state straight from the server's database and from the workspace on disk."""

    def __init__(self, db: Database, workspace: Path, marker: str) -> None:
        self.db = db
        self.workspace = workspace
        self.marker = marker.lower().encode()
        self._hashes: dict[tuple[str, int, int, int], tuple[str, bool]] = {}

    async def read(self, owner_id: uuid.UUID, *, listing: bool = True) -> State:
        """The owner's rows and files; with `listing`, also the workspace's entry names (anyone's)."""
        rows: dict[str, list[tuple[Any, ...]]] = {}
        worktrees: list[str] = []
        async with self.db.read() as session:
            for table in metadata.sorted_tables:
                if "owner_id" in table.c:
                    where = table.c.owner_id == owner_id
                elif table.name == "owners":
                    where = table.c.id == owner_id
                else:
                    continue  # server-wide rows (e.g. signing secrets) belong to no owner
                key = list(table.primary_key.columns)
                result = (await session.execute(select(table).where(where).order_by(*key))).all()
                rows[table.name] = [tuple(r) for r in result]
                if "worktree_path" in table.c:
                    worktrees.extend(r._mapping["worktree_path"] for r in result if r._mapping["worktree_path"])
        state = State(rows=rows, files={}, listing=self._listing() if listing else ())
        state.marked = [table for table, values in rows.items() if self.marker in repr(values).lower().encode()]
        for root in sorted(set(worktrees)):
            self._scan(Path(root), state)
        return state

    def _listing(self) -> tuple[str, ...]:
        names = [p.name for p in self.workspace.iterdir()]
        tasks = self.workspace / "tasks"
        if tasks.is_dir():
            names += [f"tasks/{p.name}" for p in tasks.iterdir()]
        return tuple(sorted(names))

    def _scan(self, root: Path, state: State) -> None:
        stack = [str(root)]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                state.files[directory] = "missing"
                continue
            for entry in entries:
                if self.marker in entry.name.lower().encode():
                    state.marked.append(entry.path)
                if entry.is_symlink():
                    state.files[entry.path] = "link:" + os.readlink(entry.path)
                elif entry.is_dir():
                    if not (entry.name == "objects" and os.path.basename(directory) == ".git"):
                        state.files[entry.path] = "dir"
                        stack.append(entry.path)
                else:
                    digest, marked = self._hash(entry)
                    state.files[entry.path] = digest
                    if marked:
                        state.marked.append(entry.path)

    def _hash(self, entry: os.DirEntry[str]) -> tuple[str, bool]:
        stat = entry.stat(follow_symlinks=False)
        key = (entry.path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._hashes.get(key)
        if cached is not None:
            return cached
        content = Path(entry.path).read_bytes()
        result = (f"{stat.st_mode:o}:{hashlib.sha256(content).hexdigest()[:16]}", self.marker in content.lower())
        if time.time_ns() - stat.st_mtime_ns > RACY_NANOS:
            self._hashes[key] = result
        return result


def _strings(message: Message) -> Iterator[str]:
    """Every string in `message`, map keys and nested messages included."""
    for fd, value in message.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            for key, item in value.items():
                yield str(key)
                if isinstance(item, Message):
                    yield from _strings(item)
                elif isinstance(item, str):
                    yield item
        elif fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            for item in value if fd.is_repeated else [value]:
                yield from _strings(item)
        elif fd.type == descriptor.FieldDescriptor.TYPE_STRING:
            yield from value if fd.is_repeated else [value]


def _named_strings(message: Message) -> Iterator[tuple[str, str]]:
    """(field name, string) of every string field in `message`, recursively."""
    for fd, value in message.ListFields():
        if fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            items = value.values() if fd.message_type.GetOptions().map_entry else value if fd.is_repeated else [value]
            for item in items:
                if isinstance(item, Message):
                    yield from _named_strings(item)
        elif fd.type == descriptor.FieldDescriptor.TYPE_STRING:
            for text in value if fd.is_repeated else [value]:
                yield fd.name, text


def _decoded(text: str) -> str:
    """`text` as base64 decoded (tokens are), or ""."""
    if not _B64.match(text):
        return ""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return ""
    return raw.decode("utf-8", "replace")


def _haystack(texts: list[str]) -> str:
    """Lowercase text without hyphens, so that any spelling of a UUID is found as 32 hex digits."""
    return "\n".join(texts + [_decoded(t) for t in texts]).lower().replace("-", "")


def _status_strings(answer: Answer) -> list[str]:
    texts = [answer.details]
    for key, value in answer.trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            texts.append(status.message)
            for detail in status.details:
                for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
                    unpacked = kind()
                    if detail.Unpack(unpacked):
                        texts.extend(_strings(unpacked))
                texts.append(detail.value.decode("utf-8", "replace"))
        else:
            texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return texts


def answer_text(answer: Answer) -> str:
    texts = _status_strings(answer)
    for response in answer.responses:
        texts.extend(_strings(response))
        texts.append(response.SerializeToString().decode("utf-8", "replace"))
    return _haystack(texts)


def request_text(plan: CallPlan) -> str:
    texts = [value for _, value in plan.metadata]
    for request in plan.requests:
        texts.extend(_strings(request))
    return _haystack(texts)


class _Records(logging.Handler):
    """Warnings and errors logged in the process (the server runs in it) while one call runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += " | " + "".join(traceback.format_exception_only(record.exc_info[1])).strip()
        self.lines.append(line)


@dataclass
class Violation:
    rpc: str
    problems: list[str]
    request: str
    code: str
    details: str
    server_log: list[str]

    def __str__(self) -> str:
        log = "\n    ".join(self.server_log) or "(nothing logged)"
        return (
            f"{self.rpc}: " + "; ".join(self.problems) + f"\n  request: {self.request}\n"
            f"  answer: {self.code} {self.details[:400]!r}\n  server log:\n    {log}"
        )


class Oracle:
    """Makes one fuzzed call and checks every property around it."""

    def __init__(
        self,
        *,
        channel: aio.Channel,
        db: Database,
        workspace: Path,
        pool: Pool,
        owner_id: uuid.UUID,
        other_owner_id: uuid.UUID,
        backend: str,
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        self.channel = channel
        # Waits for the server's background pack merges, which earlier calls start and which change
        # object_packs rows (not the objects) whenever they end.
        self.settle = settle
        self.pool = pool
        self.owner_id = owner_id
        self.other_owner_id = other_owner_id
        self.backend = backend
        self.reader = StateReader(db, workspace, pool.marker)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.other_state: State | None = None
        # The other owner's ids (32 hex digits) that the owner sent in a text field: they may be
        # stored and shown back later without being a leak.
        self.exposed: set[str] = set()
        # The first violation found per RPC. Every call changes the world, so hypothesis's replay of a
        # failing example (to report it) would meet another state: the replay reports this one instead.
        self._found: dict[str, Violation] = {}

    def _secret_ids(self) -> list[str]:
        return [i.replace("-", "").lower() for i in self.pool.other.all_ids()]

    async def start(self) -> None:
        self.other_state = await self.reader.read(self.other_owner_id, listing=False)

    async def check(self, rpc: Rpc, plan: CallPlan) -> grpc.StatusCode:
        """Make the call and check it; returns its status code."""
        if rpc.name in self._found:
            _fail(self._found[rpc.name])
        problems: list[str] = []
        await self.settle()
        before = await self.reader.read(self.owner_id)
        records = _Records()
        logging.getLogger().addHandler(records)  # the server's and grpc's own loggers
        try:
            answer = await invoke(self.channel, rpc, plan.requests, plan.metadata, reads=plan.reads)
        finally:
            logging.getLogger().removeHandler(records)
        code = answer.code
        if code in FORBIDDEN_CODES:
            problems.append(f"answered {code.name}")
        held_to_deadline = code == grpc.StatusCode.DEADLINE_EXCEEDED and rpc.holds_the_call
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not held_to_deadline:
            problems.append(f"no answer within {rpc.deadline} s (DEADLINE_EXCEEDED): the server hangs")
        if plan.forged and code not in FORGED_CODES:
            problems.append(f"a forged API key got {code.name}")
        if held_to_deadline:
            await asyncio.sleep(0.5)  # let a long-poll that is still finishing commit before the next read
        elif answer.failed:
            after = await self.reader.read(self.owner_id)
            if not before.same_as(after):
                problems.append(f"failed call changed the owner's state: {before.diff(after)}")
        problems.extend(await self._isolation(plan, answer, before))
        problems.extend(await self._health())
        self._learn(plan, answer)
        if problems:
            self._report(
                rpc,
                Violation(
                    rpc=rpc.name,
                    problems=problems,
                    request=repr(plan),
                    code=code.name,
                    details=answer.details,
                    server_log=records.lines,
                ),
            )
        return code

    async def _isolation(self, plan: CallPlan, answer: Answer, before: State) -> list[str]:
        problems = []
        other_now = await self.reader.read(self.other_owner_id, listing=False)
        assert self.other_state is not None
        if not self.other_state.same_as(other_now):
            problems.append(f"changed the other owner's state: {self.other_state.diff(other_now)}")
            self.other_state = other_now
        seen = answer_text(answer)
        if self.pool.marker.lower() in seen:
            problems.append("the answer shows the other owner's marker")
        sent = request_text(plan)
        shown = [i for i in self._secret_ids() if i in seen and i not in sent and i not in self.exposed]
        if shown:
            problems.append(f"the answer names other owner's ids it was not given: {shown[:3]}")
        if before.marked:
            problems.append(f"the owner's own state holds the other owner's marker: {before.marked[:3]}")
        return problems

    async def _health(self) -> list[str]:
        try:
            response = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except aio.AioRpcError as err:
            return [f"health check failed: {err.code().name} {err.details()}"]
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            return [f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}"]
        return []

    def _learn(self, plan: CallPlan, answer: Answer) -> None:
        """Grow the owner's pool from what it sent and got, and note other owner's ids put in text fields."""
        secret = self._secret_ids()
        for request in plan.requests:
            for name, text in _named_strings(request):
                if id_kind(name) == "request" and text and text not in self.pool.own.request_ids:
                    self.pool.own.request_ids.append(text)
                elif id_kind(name) is None and not is_token_field(name):
                    flat = text.lower().replace("-", "")
                    self.exposed.update(i for i in secret if i in flat)
        if not plan.forged:
            for response in answer.responses:
                self.pool.own.absorb(response)

    def _report(self, rpc: Rpc, violation: Violation) -> None:
        target = os.environ.get(COLLECT_ENV)
        if not target:
            self._found[rpc.name] = violation
            _fail(violation)
        record = {"backend": self.backend, **violation.__dict__}
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


def _fail(violation: Violation) -> None:
    raise AssertionError(str(violation))
