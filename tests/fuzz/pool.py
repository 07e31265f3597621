"""What each owner holds (ids, request ids, tokens, worktrees, branches), learnt from the answers it got.

The strategies draw strings from these lists while they grow: an id created by one fuzzed call is a
target of the next ones. Kinds of ids are read from field and message names (`task_id`,
`parent_task_id`, `task_ids`, `Task.id`), so a new field of a known kind needs no edit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from google.protobuf import descriptor
from google.protobuf.message import Message

ID_KINDS = ("contract", "task", "checkpoint", "snapshot", "daemon")


def id_kind(field_name: str) -> str | None:
    """'request', one of ID_KINDS, 'any' (another `*_id`), or None for a field that holds no id."""
    name = field_name[:-1] if field_name.endswith("_ids") else field_name
    if not name.endswith("_id"):
        return None
    if name == "request_id":
        return "request"
    for kind in ID_KINDS:
        if name == f"{kind}_id" or name.endswith(f"_{kind}_id"):
            return kind
    return "any"


def is_token_field(field_name: str) -> bool:
    return field_name.endswith("token")


def _kind_of_message(desc: descriptor.Descriptor) -> str | None:
    lowered = desc.name.lower()
    return next((kind for kind in ID_KINDS if lowered.endswith(kind)), None)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@dataclass
class Holdings:
    """One owner's resources as its answers named them."""

    ids: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in ID_KINDS})
    request_ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    worktrees: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)

    @staticmethod
    def _add(values: list[str], value: str) -> None:
        if value and value not in values:
            values.append(value)

    def all_ids(self) -> list[str]:
        return [value for values in self.ids.values() for value in values]

    def new_request_id(self) -> str:
        value = str(uuid.uuid4())
        self.request_ids.append(value)
        return value

    def absorb(self, message: Message) -> None:
        """Learn every id, token, worktree and branch that `message` names (well-known types skipped)."""
        own_kind = _kind_of_message(message.DESCRIPTOR)
        for fd, value in message.ListFields():
            if fd.message_type is not None:
                if fd.message_type.full_name.startswith("google.") or fd.message_type.GetOptions().map_entry:
                    continue
                for item in value if fd.is_repeated else [value]:
                    self.absorb(item)
                continue
            if fd.type != descriptor.FieldDescriptor.TYPE_STRING:
                continue
            for text in value if fd.is_repeated else [value]:
                self._absorb_string(fd.name, own_kind, text)

    def _absorb_string(self, name: str, own_kind: str | None, text: str) -> None:
        kind = own_kind if name == "id" else id_kind(name)
        if is_token_field(name):
            self._add(self.tokens, text)
        elif kind in ID_KINDS and _is_uuid(text):
            self._add(self.ids[kind], text)
        elif name == "worktree_path":
            self._add(self.worktrees, text)
        elif name in ("branch", "ref"):
            self._add(self.branches, text.removeprefix("refs/heads/"))


@dataclass
class Pool:
    """Everything the strategies draw from: the owner under test's holdings and another owner's."""

    own: Holdings
    other: Holdings
    own_key: str
    # The other owner's marker: in every text of its resources, never in a request.
    marker: str
