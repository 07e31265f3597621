"""Generic checks of every request message, driven by its descriptor and the options of limits.proto.

The interceptor runs them before any servicer, and on each message of a client stream, so a servicer
only sees what both backends can store and the service can answer: PostgreSQL refuses NUL in text and
jsonb, protobuf refuses Timestamps outside years 1-9999 and NaN in a Struct when it converts or
serializes them, and every size is bounded by the limit declared on its field (or the file's
default). A new proto field is covered without a code change. Each failure is INVALID_ARGUMENT
naming the field path (`messages[2].content`, `events[0].data.foo[1]`).

The walk runs on every event a daemon records, so it builds no path while all is well: a problem
comes back up as the path segments below it, innermost first, and the error to raise for the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from makima.server.domain.errors import InvalidArgument
from makima.v1 import limits_pb2

DEFAULT_LIMITS = limits_pb2.DESCRIPTOR.GetOptions().Extensions[limits_pb2.default_limits]
# protobuf's own range of Timestamp (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z) and Duration.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000

_STRUCTS = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"

# The path segments below the failing field, innermost first, and the error for the full path.
_Problem = tuple[list[str], Callable[[str], InvalidArgument]]


@dataclass(frozen=True)
class _Rule:
    """How one field is checked, computed once per field from its descriptor and options."""

    name: str
    kind: str  # string, bytes, float, struct, timestamp, duration, message, or other (no check)
    repeated: bool
    is_map: bool
    max_length: int
    max_items: int
    max_bytes: int


def check_request(message: Message) -> None:
    """Raise InvalidArgument for the first field of `message` that breaks a rule."""
    problem = _message_problem(message)
    if problem is not None:
        segments, error = problem
        raise error("".join(reversed(segments)).removeprefix("."))


def _message_problem(message: Message) -> _Problem | None:
    for field, value in message.ListFields():
        rule = _rule(field)
        problem = _field_problem(rule, value)
        if problem is not None:
            problem[0].append(f".{rule.name}")
            return problem
    return None


def _field_problem(rule: _Rule, value: Any) -> _Problem | None:
    if not rule.repeated:
        return _value_problem(rule, value)
    if len(value) > rule.max_items:
        return [], _limit("max_items", rule.max_items, f"must have at most {rule.max_items} elements")
    if rule.kind == "other":
        return None
    items = value.items() if rule.is_map else enumerate(value)
    for key, item in items:
        problem = _text_problem(key, DEFAULT_LIMITS.max_string_length) if isinstance(key, str) else None
        problem = problem or _value_problem(rule, item)
        if problem is not None:
            problem[0].append(f"[{_shown(key)}]")
            return problem
    return None


def _value_problem(rule: _Rule, value: Any) -> _Problem | None:
    kind = rule.kind
    if kind == "string":
        return _text_problem(value, rule.max_length)
    if kind == "message":
        return _message_problem(value)
    if kind == "struct":
        size = value.ByteSize()
        if size > rule.max_bytes:
            return [], _limit(
                "max_bytes", rule.max_bytes, f"must be at most {rule.max_bytes} bytes serialized ({size})"
            )
        return _struct_problem(value, 0)
    if kind == "timestamp":
        if MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= value.nanos < _NANOS:
            return None
        return [], _error(
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z with nanos in [0, 999999999]",
            "TIMESTAMP_OUT_OF_RANGE",
        )
    if kind == "duration":
        seconds, nanos = value.seconds, value.nanos
        if abs(seconds) <= MAX_DURATION_SECONDS and -_NANOS < nanos < _NANOS and seconds * nanos >= 0:
            return None
        return [], _error(
            f"must be within +-{MAX_DURATION_SECONDS} seconds, with nanos of the same sign below 1e9",
            "DURATION_OUT_OF_RANGE",
        )
    if kind == "bytes":
        if len(value) <= rule.max_length:
            return None
        return [], _limit("max_length", rule.max_length, f"must be at most {rule.max_length} bytes")
    if kind == "float":
        return None if math.isfinite(value) else ([], _NOT_FINITE)
    return None


def _text_problem(value: str, max_length: int) -> _Problem | None:
    if "\x00" in value:
        return [], _NUL
    if len(value) > max_length:
        return [], _limit("max_length", max_length, f"must be at most {max_length} characters ({len(value)})")
    return None


def _struct_problem(value: struct_pb2.Struct | struct_pb2.ListValue | struct_pb2.Value, depth: int) -> _Problem | None:
    """A Struct, ListValue or Value: nesting depth, NUL in keys and strings, NaN and infinities."""
    if isinstance(value, struct_pb2.Value):
        which = value.WhichOneof("kind")
        if which == "number_value":
            return None if math.isfinite(value.number_value) else ([], _NOT_FINITE)
        if which == "string_value":
            return None if "\x00" not in value.string_value else ([], _NUL)
        if which in ("struct_value", "list_value"):
            return _struct_problem(getattr(value, which), depth)
        return None
    depth += 1
    if depth > DEFAULT_LIMITS.max_struct_depth:
        limit = DEFAULT_LIMITS.max_struct_depth
        return [], _limit("max_struct_depth", limit, f"must be nested at most {limit} deep")
    if isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            if "\x00" in key:
                return [], _error("must not have a key with a NUL character", "NUL_CHARACTER")
            problem = _struct_problem(item, depth)
            if problem is not None:
                problem[0].append(f".{_shown(key)}")
                return problem
        return None
    for i, item in enumerate(value.values):
        problem = _struct_problem(item, depth)
        if problem is not None:
            problem[0].append(f"[{i}]")
            return problem
    return None


def _error(description: str, reason: str) -> Callable[[str], InvalidArgument]:
    return lambda path: InvalidArgument.of(path, description, reason=reason)


def _limit(limit: str, value: int, description: str) -> Callable[[str], InvalidArgument]:
    def error(path: str) -> InvalidArgument:
        out = InvalidArgument.of(path, description, reason="LIMIT_EXCEEDED")
        out.metadata.update(limit=limit, max=str(value))
        return out

    return error


_NUL = _error("must not contain a NUL character", "NUL_CHARACTER")
_NOT_FINITE = _error("must be a finite number", "NOT_FINITE")


def _shown(key: object) -> str:
    """An index, map key or Struct key as it appears in a field path: as is when short and printable."""
    text = str(key)
    return text if len(text) <= 64 and text.isprintable() and text else repr(text[:64])


@cache
def _rule(field: FieldDescriptor) -> _Rule:
    options = field.GetOptions()
    explicit = {
        name: options.Extensions[ext] if options.HasExtension(ext) else 0
        for name, ext in (
            ("max_length", limits_pb2.max_length),
            ("max_items", limits_pb2.max_items),
            ("max_bytes", limits_pb2.max_bytes),
        )
    }
    entry = field.message_type if field.message_type and field.message_type.GetOptions().map_entry else None
    is_map = entry is not None
    kind = _kind(entry.fields_by_name["value"] if entry is not None else field)
    default_length = DEFAULT_LIMITS.max_bytes_length if kind == "bytes" else DEFAULT_LIMITS.max_string_length
    return _Rule(
        name=field.name,
        kind=kind,
        repeated=field.is_repeated,
        is_map=is_map,
        max_length=explicit["max_length"] or default_length,
        max_items=explicit["max_items"] or DEFAULT_LIMITS.max_items,
        max_bytes=explicit["max_bytes"] or DEFAULT_LIMITS.max_struct_bytes,
    )


def _kind(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_STRING:
        return "string"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "bytes"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return "float"
    if field.type != FieldDescriptor.TYPE_MESSAGE or field.message_type is None:
        return "other"
    name = field.message_type.full_name
    if name in _STRUCTS:
        return "struct"
    if name == _TIMESTAMP:
        return "timestamp"
    if name == _DURATION:
        return "duration"
    return "message"
