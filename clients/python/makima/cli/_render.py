"""Human-readable and JSON renderings of makima.v1 messages for the command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
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


def to_text(output: Output) -> str:
    """A listing for people: set fields only, enums and times shortened, lists as tables. Sections
    follow one another, each headed by its own field names."""
    messages = [output] if isinstance(output, Message) else list(output.values())
    return "\n\n".join("\n".join(_lines(message)) for message in messages)


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


def event_line(event: Any) -> str:
    """One timeline event on one line, for output that streams (no column widths known ahead)."""
    kind = enum_text(event.DESCRIPTOR.fields_by_name["kind"].enum_type, event.kind)
    return f"{event.cursor:>8}  {timestamp_text(event.create_time)}  {kind:<22}  {event.summary}"


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


def _lines(message: Message) -> list[str]:
    # Plain values first, then nested messages and lists, so that a resource's own fields stay together.
    fields = sorted((f for f in _fields(message) if _shown(message, f)), key=lambda f: _resource(f) is not None)
    width = max((len(f.name) for f in fields), default=0)
    out: list[str] = []
    for field in fields:
        value = getattr(message, field.name)
        resource = _resource(field)
        if resource is not None:
            out.append(f"{field.name}:")
            out.extend(_indent(_items(resource, list(value)) if field.is_repeated else _lines(value)))
        elif field.is_repeated:
            out.append(f"{field.name:<{width}}  {', '.join(_value_text(field, v) for v in value)}")
        else:
            out.append(f"{field.name:<{width}}  {_value_text(field, value)}")
    return out


def _indent(lines: list[str]) -> list[str]:
    return [f"  {line}" if line else line for line in lines]


def _items(name: str, items: list[Any]) -> list[str]:
    if not items:
        return ["(none)"]
    if name == "makima.v1.ConversationMessage":
        return _messages(items)
    columns = _TABLES.get(name)
    if columns is None:
        out: list[str] = []
        for item in items:
            out.extend(["-", *_indent(_lines(item))])
        return out
    return _table(columns, items)


def _messages(items: list[Any]) -> list[str]:
    out: list[str] = []
    for m in items:
        role = enum_text(m.DESCRIPTOR.fields_by_name["role"].enum_type, m.role)
        out.append(f"#{m.index} {role}  {timestamp_text(m.create_time)}")
        out.extend(f"    {line}" for line in (m.content or "").splitlines() or [""])
    return out


def _table(columns: list[tuple[str, Callable[[Any], object]]], rows: list[Any]) -> list[str]:
    cells = [[header for header, _ in columns]] + [[str(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def _enum_of(row: Any, name: str) -> str:
    return enum_text(row.DESCRIPTOR.fields_by_name[name].enum_type, getattr(row, name))


_TABLES: dict[str, list[tuple[str, Callable[[Any], object]]]] = {
    "makima.v1.TimelineEvent": [
        ("CURSOR", lambda e: e.cursor),
        ("TIME", lambda e: timestamp_text(e.create_time)),
        ("KIND", lambda e: _enum_of(e, "kind")),
        ("CONTRACT", lambda e: e.contract_id),
        ("TASK", lambda e: e.task_id),
        ("SUMMARY", lambda e: e.summary),
    ],
    "makima.v1.TaskEvent": [
        ("SEQ", lambda e: e.sequence),
        ("TIME", lambda e: timestamp_text(e.event_time)),
        ("KIND", lambda e: _enum_of(e, "kind")),
        ("TEXT", lambda e: e.text.replace("\n", " ")),
    ],
    "makima.v1.Checkpoint": [
        ("ID", lambda c: c.id),
        ("CREATED", lambda c: timestamp_text(c.create_time)),
        ("KIND", lambda c: _enum_of(c, "kind")),
        ("MESSAGES", lambda c: c.message_count),
        ("EVENTS", lambda c: c.event_sequence),
        ("COMMIT", lambda c: c.commit_sha[:12]),
        ("MESSAGE", lambda c: c.message.splitlines()[0] if c.message else ""),
    ],
    "makima.v1.ConversationSnapshot": [
        ("ID", lambda s: s.id),
        ("CREATED", lambda s: timestamp_text(s.create_time)),
        ("REASON", lambda s: _enum_of(s, "reason")),
        ("MESSAGES", lambda s: s.message_count),
    ],
    "makima.v1.PhaseSpan": [
        ("PHASE", lambda p: p.phase),
        ("START", lambda p: timestamp_text(p.start_time)),
        ("END", lambda p: timestamp_text(p.end_time)),
    ],
    "makima.v1.FileChange": [
        ("CHANGE", lambda c: _enum_of(c, "change_type")),
        ("PATH", lambda c: c.path),
    ],
    "makima.v1.LineageNode": [
        ("TASK", lambda n: "  " * n.depth + n.task.name),
        ("ID", lambda n: n.task.id),
        ("RELATION", lambda n: _enum_of(n, "relation")),
        ("STATUS", lambda n: _enum_of(n.task, "status")),
    ],
}
