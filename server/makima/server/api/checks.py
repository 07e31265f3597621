"""Generic checks of every request message, driven by its descriptor and the options of limits.proto.

The interceptor runs them before any servicer, and on each message of a client stream, so a servicer
only sees what both backends can store and the service can answer: PostgreSQL refuses NUL in text and
jsonb, protobuf refuses Timestamps outside years 1-9999 and NaN in a Struct when it converts or
serializes them, and every size is bounded by the limit declared on its field (or the file's
default). A new proto field is covered without a code change. Each failure is INVALID_ARGUMENT
naming the field path (`messages[2].content`, `events[0].data.foo[1]`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

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

_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST = "google.protobuf.ListValue"
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"


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
    _check_message(message, "")


def _check_message(message: Message, prefix: str) -> None:
    for field, value in message.ListFields():
        rule = _rule(field)
        path = prefix + rule.name
        if not rule.repeated:
            _check_value(rule, value, path)
            continue
        if len(value) > rule.max_items:
            raise _limit(path, "max_items", rule.max_items, f"must have at most {rule.max_items} elements")
        if rule.is_map:
            for key, item in value.items():
                item_path = f"{path}[{_shown(key)}]"
                if isinstance(key, str):
                    _check_text(key, item_path, DEFAULT_LIMITS.max_string_length)
                _check_value(rule, item, item_path)
        elif rule.kind != "other":
            for i, item in enumerate(value):
                _check_value(rule, item, f"{path}[{i}]")


def _check_value(rule: _Rule, value: Any, path: str) -> None:
    kind = rule.kind
    if kind == "string":
        _check_text(value, path, rule.max_length)
    elif kind == "bytes":
        if len(value) > rule.max_length:
            raise _limit(path, "max_length", rule.max_length, f"must be at most {rule.max_length} bytes")
    elif kind == "float":
        if not math.isfinite(value):
            raise InvalidArgument.of(path, "must be a finite number", reason="NOT_FINITE")
    elif kind == "message":
        _check_message(value, path + ".")
    elif kind == "struct":
        size = value.ByteSize()
        if size > rule.max_bytes:
            raise _limit(
                path, "max_bytes", rule.max_bytes, f"must be at most {rule.max_bytes} bytes serialized ({size})"
            )
        _check_struct_value(value, path, 0)
    elif kind == "timestamp":
        if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= value.nanos < _NANOS:
            raise InvalidArgument.of(
                path,
                "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z with nanos in [0, 999999999]",
                reason="TIMESTAMP_OUT_OF_RANGE",
            )
    elif kind == "duration":
        seconds, nanos = value.seconds, value.nanos
        if (
            abs(seconds) > MAX_DURATION_SECONDS
            or not -_NANOS < nanos < _NANOS
            or (seconds > 0 and nanos < 0)
            or (seconds < 0 and nanos > 0)
        ):
            raise InvalidArgument.of(
                path,
                f"must be within +-{MAX_DURATION_SECONDS} seconds, with nanos of the same sign below 1e9",
                reason="DURATION_OUT_OF_RANGE",
            )


def _check_text(value: str, path: str, max_length: int) -> None:
    if "\x00" in value:
        raise InvalidArgument.of(path, "must not contain a NUL character", reason="NUL_CHARACTER")
    if len(value) > max_length:
        raise _limit(path, "max_length", max_length, f"must be at most {max_length} characters ({len(value)})")


def _check_struct_value(value: Message, path: str, depth: int) -> None:
    """A Struct, ListValue or Value: depth, NUL in keys and strings, finite numbers."""
    name = value.DESCRIPTOR.full_name
    if name == _VALUE:
        which = value.WhichOneof("kind")  # type: ignore[attr-defined]
        if which == "number_value":
            if not math.isfinite(value.number_value):  # type: ignore[attr-defined]
                raise InvalidArgument.of(path, "must be a finite number", reason="NOT_FINITE")
        elif which == "string_value":
            if "\x00" in value.string_value:  # type: ignore[attr-defined]
                raise InvalidArgument.of(path, "must not contain a NUL character", reason="NUL_CHARACTER")
        elif which in ("struct_value", "list_value"):
            _check_struct_value(getattr(value, which), path, depth)
        return
    depth += 1
    if depth > DEFAULT_LIMITS.max_struct_depth:
        limit = DEFAULT_LIMITS.max_struct_depth
        raise _limit(path, "max_struct_depth", limit, f"must be nested at most {limit} deep")
    if name == _STRUCT:
        for key, item in value.fields.items():  # type: ignore[attr-defined]
            if "\x00" in key:
                raise InvalidArgument.of(path, "must not have a key with a NUL character", reason="NUL_CHARACTER")
            _check_struct_value(item, f"{path}.{_shown(key)}", depth)
    else:
        for i, item in enumerate(value.values):  # type: ignore[attr-defined]
            _check_struct_value(item, f"{path}[{i}]", depth)


def _shown(key: object) -> str:
    """A map or Struct key as it appears in a field path: as is when short and printable."""
    text = str(key)
    return text if len(text) <= 64 and text.isprintable() and text else repr(text[:64])


def _limit(path: str, limit: str, value: int, description: str) -> InvalidArgument:
    error = InvalidArgument.of(path, description, reason="LIMIT_EXCEEDED")
    error.metadata.update(limit=limit, max=str(value))
    return error


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
    target = field
    is_map = bool(field.message_type and field.message_type.GetOptions().map_entry)
    if is_map:
        target = field.message_type.fields_by_name["value"]
    kind = _kind(target)
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
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return "other"
    name = field.message_type.full_name
    if name in (_STRUCT, _VALUE, _LIST):
        return "struct"
    if name == _TIMESTAMP:
        return "timestamp"
    if name == _DURATION:
        return "duration"
    return "message"
