"""Human-readable and JSON renderings of makima.v1 messages for the command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

# Output of a command: one response message, or named sections when it calls several RPCs.
Output = Message | Mapping[str, Message]


def to_json(output: Output) -> str:
    """The proto JSON mapping (proto field names, every field present) so scripts see stable keys."""
    if isinstance(output, Message):
        return json.dumps(_dict(output), indent=2)
    return json.dumps({name: _dict(message) for name, message in output.items()}, indent=2)


def json_line(message: Message) -> str:
    """One message as one line of JSON, for output that streams (JSON lines)."""
    return json.dumps(_dict(message), separators=(",", ":"))


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@dataclass(frozen=True)
class View:
    """How a listing is laid out: `width` columns to fit (None: no limit, as into a pipe), and `wide`
    for full ids and uncut tables (`-o wide`)."""

    width: int | None = None
    wide: bool = False


def to_text(output: Output, view: View) -> str:
    """A listing for people: set fields only, enums and times shortened, lists as tables. Sections
    follow one another, each headed by its own field names."""
    messages = [output] if isinstance(output, Message) else list(output.values())
    return "\n\n".join("\n".join(_lines(message, view)) for message in messages)


def enum_names(enum: EnumDescriptor) -> dict[str, int]:
    """Short lowercase names of an enum's values (TASK_EVENT_KIND_TOOL_CALL -> tool_call), without UNSPECIFIED."""
    prefix = _enum_prefix(enum)
    return {v.name.removeprefix(prefix).lower(): v.number for v in enum.values if v.number != 0}


def _enum_prefix(enum: EnumDescriptor) -> str:
    # Every makima enum has its X_UNSPECIFIED = 0; X_ is the prefix its values share.
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def enum_text(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    return value.name.removeprefix(_enum_prefix(enum)).lower() if value else str(number)


def timestamp_text(message: Any) -> str:
    if not message.seconds and not message.nanos:
        return ""
    return str(message.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ"))


_KIND_WIDTH = 21  # the longest timeline event kind, conversation_restored
_CURSOR_WIDTH = 6
SHORT_ID = 8  # the shortest id prefix shown, as git shows at least 7 hex digits of a commit


def event_line(event: Any, *, width: int | None, wide: bool, id_length: int = SHORT_ID) -> str:
    """One timeline event on one line: the rows of `makima timeline` and the lines of `--follow` alike,
    so that a follower's output reads as the list does. Cut to `width` columns when there is one."""
    kind = enum_text(event.DESCRIPTOR.fields_by_name["kind"].enum_type, event.kind)
    ids = [event.contract_id, event.task_id] if wide else [event.task_id[:id_length]]
    return _timeline_row([str(event.cursor), timestamp_text(event.create_time), kind, *ids, event.summary], width)


def timeline_header(*, width: int | None, wide: bool) -> str:
    """The column names above `event_line` rows."""
    ids = ["CONTRACT", "TASK"] if wide else ["TASK"]
    return _timeline_row(["CURSOR", "TIME", "KIND", *ids, "SUMMARY"], width)


def _timeline_row(cells: list[str], width: int | None) -> str:
    cursor, time, kind, *ids, summary = cells
    id_width = 36 if len(ids) == 2 else SHORT_ID
    head = "  ".join(
        [cursor.rjust(_CURSOR_WIDTH), time.ljust(20), kind.ljust(_KIND_WIDTH), *(i.ljust(id_width) for i in ids)]
    )
    return _cut(f"{head}  {summary}".rstrip(), width)


def _cut(text: str, width: int | None) -> str:
    """`text` within `width` columns, an ellipsis marking what was cut."""
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "\u2026"


def _value_text(field: FieldDescriptor, value: Any) -> str:
    if field.enum_type is not None:
        return enum_text(field.enum_type, value)
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return timestamp_text(value)
        if name == "google.protobuf.Duration":
            return f"{value.ToTimedelta().total_seconds():g}s"
        return json.dumps(json_format.MessageToDict(value), separators=(",", ":"))  # Struct and the like
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _resource(field: FieldDescriptor) -> str | None:
    """The full name of a field's message type unless it is a plain value (scalar, enum, Timestamp...)."""
    message_type = field.message_type
    if message_type is None or message_type.full_name.startswith("google.protobuf."):
        return None
    return str(message_type.full_name)


def _fields(message: Message) -> list[FieldDescriptor]:
    return cast(list[FieldDescriptor], list(message.DESCRIPTOR.fields))


def _shown(message: Message, field: FieldDescriptor) -> bool:
    """Whether a field is worth a line: set, and not an empty string or an unspecified enum."""
    if field.is_repeated:
        # A list of resources is always shown, "(none)" when empty: an empty answer is an answer.
        return _resource(field) is not None or bool(getattr(message, field.name))
    if field.has_presence:
        return message.HasField(field.name)
    value = getattr(message, field.name)
    return not (value == "" or (field.enum_type is not None and value == 0))


def _lines(message: Message, view: View) -> list[str]:
    # Plain values first, then nested messages and lists, so that a resource's own fields stay together.
    fields = sorted((f for f in _fields(message) if _shown(message, f)), key=lambda f: _resource(f) is not None)
    width = max((len(f.name) for f in fields), default=0)
    inner = View(None if view.width is None else view.width - 2, view.wide)
    out: list[str] = []
    for field in fields:
        value = getattr(message, field.name)
        resource = _resource(field)
        if resource is not None:
            out.append(f"{field.name}:")
            out.extend(_indent(_items(resource, list(value), inner) if field.is_repeated else _lines(value, inner)))
        elif field.is_repeated:
            out.append(f"{field.name:<{width}}  {', '.join(_value_text(field, v) for v in value)}")
        else:
            out.append(f"{field.name:<{width}}  {_value_text(field, value)}")
    return out


def _indent(lines: list[str]) -> list[str]:
    return [f"  {line}" if line else line for line in lines]


def _items(name: str, items: list[Any], view: View) -> list[str]:
    if not items:
        return ["(none)"]
    if name == "makima.v1.ConversationMessage":
        return _messages(items)
    if name == "makima.v1.TimelineEvent":
        length = unique_prefix_length([e.task_id for e in items if e.task_id])
        width = None if view.wide else view.width
        rows = [event_line(e, width=width, wide=view.wide, id_length=length) for e in items]
        return [timeline_header(width=width, wide=view.wide), *rows]
    columns = _TABLES.get(name)
    if columns is None:
        out: list[str] = []
        for item in items:
            out.extend(["-", *_indent(_lines(item, View(None if view.width is None else view.width - 2, view.wide)))])
        return out
    return _table(columns, items, view)


def _messages(items: list[Any]) -> list[str]:
    out: list[str] = []
    for m in items:
        role = enum_text(m.DESCRIPTOR.fields_by_name["role"].enum_type, m.role)
        out.append(f"#{m.index} {role}  {timestamp_text(m.create_time)}")
        out.extend(f"    {line}" for line in (m.content or "").splitlines() or [""])
    return out


def unique_prefix_length(ids: list[str]) -> int:
    """The shortest prefix length, at least SHORT_ID, that tells every one of `ids` apart, as git
    abbreviates commits."""
    distinct = set(ids)
    length = SHORT_ID
    while length < max((len(i) for i in distinct), default=0) and len({i[:length] for i in distinct}) < len(distinct):
        length += 1
    return length


@dataclass(frozen=True)
class Column:
    """A table column: its header, its cell, whether it holds ids (shown as unique prefixes), and
    whether it is the one cut to fit the terminal."""

    header: str
    cell: Callable[[Any], object]
    is_id: bool = False
    flexible: bool = False


def _table(columns: list[Column], rows: list[Any], view: View) -> list[str]:
    body = [[str(column.cell(row)) for column in columns] for row in rows]
    if not view.wide:
        for i, column in enumerate(columns):
            if column.is_id:
                length = unique_prefix_length([row_cells[i] for row_cells in body if row_cells[i]])
                for row_cells in body:
                    row_cells[i] = row_cells[i][:length]
    cells = [[column.header for column in columns], *body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    if view.width is not None and not view.wide:
        flex = next((i for i, column in enumerate(columns) if column.flexible), len(columns) - 1)
        others = sum(widths) - widths[flex] + 2 * (len(columns) - 1)
        widths[flex] = max(min(widths[flex], view.width - others), len(columns[flex].header))
        cells = [[_cut(cell, widths[flex]) if i == flex else cell for i, cell in enumerate(row)] for row in cells]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return lines if view.width is None or view.wide else [_cut(line, view.width) for line in lines]


def _enum_of(row: Any, name: str) -> str:
    return enum_text(row.DESCRIPTOR.fields_by_name[name].enum_type, getattr(row, name))


_TABLES: dict[str, list[Column]] = {
    "makima.v1.Contract": [
        Column("ID", lambda c: c.id, is_id=True),
        Column("NAME", lambda c: c.name, flexible=True),
        Column("PHASE", lambda c: c.phase),
        Column("STATUS", lambda c: _enum_of(c, "status")),
        Column("CREATED", lambda c: timestamp_text(c.create_time)),
    ],
    "makima.v1.Task": [
        Column("ID", lambda t: t.id, is_id=True),
        Column("NAME", lambda t: t.name, flexible=True),
        Column("KIND", lambda t: _enum_of(t, "kind")),
        Column("STATUS", lambda t: _enum_of(t, "status")),
        Column("CONTRACT", lambda t: t.contract_id, is_id=True),
        Column("CREATED", lambda t: timestamp_text(t.create_time)),
    ],
    "makima.v1.TaskEvent": [
        Column("SEQ", lambda e: e.sequence),
        Column("TIME", lambda e: timestamp_text(e.event_time)),
        Column("KIND", lambda e: _enum_of(e, "kind")),
        Column("TEXT", lambda e: e.text.replace("\n", " "), flexible=True),
    ],
    "makima.v1.Checkpoint": [
        Column("ID", lambda c: c.id, is_id=True),
        Column("CREATED", lambda c: timestamp_text(c.create_time)),
        Column("KIND", lambda c: _enum_of(c, "kind")),
        Column("MESSAGES", lambda c: c.message_count),
        Column("EVENTS", lambda c: c.event_sequence),
        Column("COMMIT", lambda c: c.commit_sha[:12]),
        Column("MESSAGE", lambda c: c.message.splitlines()[0] if c.message else "", flexible=True),
    ],
    "makima.v1.ConversationSnapshot": [
        Column("ID", lambda s: s.id, is_id=True),
        Column("CREATED", lambda s: timestamp_text(s.create_time)),
        Column("REASON", lambda s: _enum_of(s, "reason")),
        Column("MESSAGES", lambda s: s.message_count),
    ],
    "makima.v1.PhaseSpan": [
        Column("PHASE", lambda p: p.phase, flexible=True),
        Column("START", lambda p: timestamp_text(p.start_time)),
        Column("END", lambda p: timestamp_text(p.end_time)),
    ],
    "makima.v1.FileChange": [
        Column("CHANGE", lambda c: _enum_of(c, "change_type")),
        Column("PATH", lambda c: c.path, flexible=True),
    ],
    "makima.v1.LineageNode": [
        Column("TASK", lambda n: "  " * n.depth + n.task.name, flexible=True),
        Column("ID", lambda n: n.task.id, is_id=True),
        Column("RELATION", lambda n: _enum_of(n, "relation")),
        Column("STATUS", lambda n: _enum_of(n.task, "status")),
    ],
}
