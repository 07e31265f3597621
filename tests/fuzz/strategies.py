"""Hypothesis strategies for any request message, built from its descriptor alone.

Scalars come from extreme and ordinary values of their type, enums from their known values,
UNSPECIFIED and unknown numbers, nested messages recursively, oneofs one member (or none) at a
time, repeated fields empty, short or huge, maps from drawn keys. The well-known types Timestamp,
Duration, Struct, Value and ListValue get values past their valid ranges (year 10000, negative
nanos, NaN, nesting 200 deep). Strings are chosen by the field's name from the `Pool`: ids for `*_id`
fields (own, another owner's, mutated, random), tokens for `*token` fields (captured, edited and
re-encoded, another owner's, garbage), and otherwise text, hostile strings and paths.

`valid=True` builds plausible messages (own ids, known non-zero enum values, small positive numbers,
timestamps of these years): the good messages of a client stream, and the base of the `mutants`
that get one hostile field, so that calls also reach past the first validation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import descriptor, struct_pb2, text_format
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from tests.fuzz.pool import ID_KINDS, Pool, id_kind, is_token_field
from tests.fuzz.rpcs import Rpc, message_class

T = TypeVar("T")
F = descriptor.FieldDescriptor

# Nested messages below this depth are left unset (the well-known types nest on their own).
MAX_DEPTH = 4
# A huge repeated field repeats one drawn element this often, within HUGE_BYTES.
HUGE_COUNTS = (1_001, 10_001)
HUGE_BYTES = 2_000_000
# Messages in one client stream when it is flooded.
STREAM_COUNTS = (50, 200)
LONG = 100_000
LENGTHS = (199, 200, 201, 255, 256, 499, 500, 501, 4_096, 4_097, 10_000, 10_001)

HOSTILE: tuple[str, ...] = (
    "",
    " ",
    "\t\r\n",
    "\x00",
    "a\x00b",
    "\x00" * 64,
    "x" * LONG,
    "é" * 20_000,
    "👩\u200d💻" * 5_000,
    "\u0301",
    "e\u0301\u0301\u0301\u0301",
    "\u202egnp.exe",
    "\u200b",
    "\ufeff",
    "\U0010fffd",
    "\uffff",
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    ".git",
    ".git/config",
    "tasks/../..",
    "a/../../b",
    "~/x",
    "C:\\Windows\\system32",
    "' OR '1'='1",
    "'; DROP TABLE tasks; --",
    '" OR 1=1 --',
    "%s%s%s%n",
    "%(owner_id)s",
    "{0}{1}{__class__}",
    "${jndi:ldap://127.0.0.1/x}",
    "<script>alert(1)</script>",
    "refs/heads/main",
    "HEAD",
    "a..b",
    "a.lock",
    "-x",
    "@{-1}",
    "a b",
    "a~1",
    "a^",
    "a:b",
    "a\\b",
    "/",
    "//",
    "a//b",
    "main.",
    "@",
    "null",
    "NaN",
    "-1",
    "1e309",
    "true",
)
# PostgreSQL refuses NUL in text and jsonb (SQLite stores it): drawn more often than the rest.
NUL_STRINGS = ("\x00", "a\x00b", "name\x00" * 8)
INT_EDGES = (0, 1, -1, 2, 7, 100, 1_000, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, -(2**63))
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
UNKNOWN_ENUM_NUMBERS = (99, -1, 2**31 - 1, -(2**31))
FLOAT_EDGES = (float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324, 2.0**53 + 1)
# Seconds and nanos: year 1 and 9999 and one past each, int64 extremes, now.
TIMESTAMP_SECONDS = (
    0,
    -1,
    1_750_000_000,
    253_402_300_799,
    253_402_300_800,
    -62_135_596_800,
    -62_135_596_801,
    2**63 - 1,
    -(2**63),
)
DURATION_SECONDS = (0, 1, -1, 5, 60, 3_600, 315_576_000_000, 315_576_000_001, 2**63 - 1, -(2**63))
NANOS = (0, 1, 999_999_999, 1_000_000_000, -1, -999_999_999, 2**31 - 1, -(2**31))
STRUCT_DEPTHS = (30, 200)
STRUCT_KEYS = ("", "\x00", "a" * 1_000, "$where", "__proto__", "k")


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each as likely as its weight."""
    slots = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(slots) - 1).flatmap(lambda i: slots[i])


def pick(source: Callable[[], Sequence[str]]) -> st.SearchStrategy[str]:
    """An element of a list read when drawn (the pools grow during a test); "" while it is empty."""

    def choose(i: int) -> str:
        values = source()
        return values[i % len(values)] if values else ""

    return st.integers(min_value=0, max_value=2**16).map(choose)


_MUTATIONS: tuple[Callable[[str, int], str], ...] = (
    lambda v, i: v[: i % len(v)] + ("0" if v[i % len(v)] != "0" else "1") + v[i % len(v) + 1 :],
    lambda v, i: v.upper(),
    lambda v, i: "{" + v + "}",
    lambda v, i: v[: i % len(v)],
    lambda v, i: v.replace("-", ""),
    lambda v, i: "urn:uuid:" + v,
    lambda v, i: f" {v} ",
    lambda v, i: v + "\x00",
    lambda v, i: v + v,
    lambda v, i: v[::-1],
)


def mutate(value: str, n: int) -> str:
    """`value` with one character changed, uppercased, in braces, truncated, ... (chosen by `n`)."""
    if not value:
        return "\x00"
    return _MUTATIONS[n % len(_MUTATIONS)](value, n // len(_MUTATIONS))


def mutated(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(values, st.integers(min_value=0, max_value=10_000)).map(lambda t: mutate(*t))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_JSON_EDITS: tuple[Any, ...] = (-1, 0, 2**63, 2**64, 1e308, "x", None, [], {}, True, "0" * 1_000)


def _edit_json(doc: Any, rng: random.Random) -> Any:
    """Replace one leaf of a decoded token (or drop a key) with a value of another type or range."""
    if isinstance(doc, dict) and doc:
        key = rng.choice(sorted(doc))
        if rng.random() < 0.2:
            return {k: v for k, v in doc.items() if k != key}
        return {**doc, key: _edit_json(doc[key], rng)}
    if isinstance(doc, list) and doc:
        i = rng.randrange(len(doc))
        return [*doc[:i], _edit_json(doc[i], rng), *doc[i + 1 :]]
    if isinstance(doc, int) and not isinstance(doc, bool) and rng.random() < 0.5:
        return doc + rng.choice((1, -1, 1_000_000))
    return rng.choice(_JSON_EDITS)


def edit_token(token: str, n: int) -> str:
    """`token` decoded from base64, edited (a byte flipped, cut, extended, or a JSON value changed) and re-encoded."""
    rng = random.Random(n)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raw = token.encode()
    choice = rng.randrange(5)
    if choice == 0 and raw:
        i = rng.randrange(len(raw))
        raw = raw[:i] + bytes([raw[i] ^ (1 << rng.randrange(8))]) + raw[i + 1 :]
    elif choice == 1:
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif choice == 2:
        raw += rng.choice((b"\x00", b"}", b'{"k":[1]}', b"\xff" * 8))
    else:
        try:
            doc = json.loads(raw)
        except ValueError:
            return _b64(raw[::-1])
        raw = json.dumps(_edit_json(doc, rng), separators=(",", ":")).encode()
    return _b64(raw)


def _own_ids(pool: Pool, kind: str) -> Callable[[], Sequence[str]]:
    return (lambda: pool.own.ids[kind]) if kind in ID_KINDS else pool.own.all_ids


def _other_ids(pool: Pool, kind: str) -> Callable[[], Sequence[str]]:
    return (lambda: pool.other.ids[kind]) if kind in ID_KINDS else pool.other.all_ids


def strings(name: str, pool: Pool, *, valid: bool) -> st.SearchStrategy[str]:
    """Strings for a field called `name`."""
    kind = id_kind(name)
    if is_token_field(name):
        if valid:
            return st.just("")
        return weighted(
            (2, st.just("")),
            (3, pick(lambda: pool.own.tokens)),
            (3, st.tuples(pick(lambda: pool.own.tokens), st.integers(0, 2**32)).map(lambda t: edit_token(*t))),
            (2, pick(lambda: pool.other.tokens)),
            (1, st.text(max_size=40)),
            (1, st.binary(max_size=48).map(_b64)),
            (1, st.sampled_from(HOSTILE)),
        )
    if kind == "request":
        if valid:
            return st.one_of(st.just(""), st.uuids().map(str))
        return weighted(
            (6, st.uuids().map(str)),
            (2, st.just("")),
            (2, pick(lambda: pool.own.request_ids)),
            (1, pick(lambda: pool.other.request_ids)),
            (1, mutated(pick(lambda: pool.own.request_ids))),
            (1, st.sampled_from(HOSTILE)),
        )
    if kind is not None:
        own, other = _own_ids(pool, kind), _other_ids(pool, kind)
        if valid:
            return pick(own)
        return weighted(
            (6, pick(own)),
            (1, pick(pool.own.all_ids)),
            (2, pick(other)),
            (2, mutated(pick(own))),
            (1, mutated(pick(other))),
            (1, st.uuids().map(str)),
            (1, st.sampled_from(HOSTILE)),
        )
    if valid:
        return st.sampled_from(("fuzz", "plan", "hello world", "execute"))
    return weighted(
        (3, st.text(max_size=24)),
        (2, st.sampled_from(NUL_STRINGS)),
        (4, st.sampled_from(HOSTILE)),
        (1, st.sampled_from(LENGTHS).map(lambda n: "a" * n)),
        (1, pick(pool.own.all_ids)),
        (1, pick(lambda: pool.own.worktrees)),
        (1, pick(lambda: pool.other.worktrees)),
        (1, pick(lambda: pool.own.branches)),
    )


def integers(field_type: int, *, valid: bool) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[field_type]
    if valid:  # 0 now and then: the next index of an empty conversation, the first page, ...
        return weighted((1, st.just(0)), (3, st.integers(min_value=max(low, 1), max_value=50)))
    edges = sorted({v for v in INT_EDGES if low <= v <= high})
    return weighted(
        (3, st.sampled_from(edges)),
        (2, st.integers(min_value=max(low, -3), max_value=20)),
        (1, st.integers(min_value=low, max_value=high)),
    )


def floats(field_type: int, *, valid: bool) -> st.SearchStrategy[float]:
    width = 32 if field_type == F.TYPE_FLOAT else 64
    if valid:
        return st.floats(min_value=0, max_value=100, width=width)
    edges = st.sampled_from(FLOAT_EDGES if width == 64 else (float("nan"), float("inf"), -0.0))
    return weighted((1, edges), (2, st.floats(width=width)))


def enums(enum: descriptor.EnumDescriptor, *, valid: bool) -> st.SearchStrategy[int]:
    numbers = [v.number for v in enum.values]
    if valid:
        return st.sampled_from([n for n in numbers if n] or numbers)
    return weighted((4, st.sampled_from(numbers)), (1, st.sampled_from(UNKNOWN_ENUM_NUMBERS)))


def byte_strings(*, valid: bool) -> st.SearchStrategy[bytes]:
    if valid:
        return st.binary(max_size=16)
    return weighted(
        (2, st.binary(max_size=64)),
        (1, st.sampled_from((b"", b"\x00" * 64, b"\xff\xfe\xfd", b"\x80" * 1_000, b"x" * LONG))),
    )


# Fillers: a drawn value is a function that fills a message in place. Deeply nested messages (a
# Struct 200 levels deep) cannot be copied (protobuf parses a copy, within a depth limit), so every
# message is built where it will be sent.

Filler = Callable[[Message], None]


def _fills(*steps: Filler) -> Filler:
    def fill(target: Message) -> None:
        for step in steps:
            step(target)

    return fill


# google.protobuf.Timestamp / Duration / Struct / Value / ListValue


def _seconds_and_nanos(edges: Sequence[int]) -> st.SearchStrategy[tuple[int, int]]:
    seconds = weighted(
        (3, st.sampled_from(edges)),
        (2, st.integers(min_value=0, max_value=2_000_000_000)),
        (1, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    )
    nanos = weighted(
        (3, st.just(0)),
        (2, st.sampled_from(NANOS)),
        (1, st.integers(min_value=-(2**31), max_value=2**31 - 1)),
    )
    return st.tuples(seconds, nanos)


def _set_time(pair: tuple[int, int]) -> Filler:
    def fill(target: Message) -> None:
        target.seconds, target.nanos = pair  # type: ignore[attr-defined]

    return fill


def timestamps(*, valid: bool) -> st.SearchStrategy[Filler]:
    if valid:
        return st.integers(min_value=1_600_000_000, max_value=1_900_000_000).map(lambda s: _set_time((s, 0)))
    return _seconds_and_nanos(TIMESTAMP_SECONDS).map(_set_time)


def durations(*, valid: bool) -> st.SearchStrategy[Filler]:
    if valid:
        return st.integers(min_value=0, max_value=1).map(lambda s: _set_time((s, 0)))
    return _seconds_and_nanos(DURATION_SECONDS).map(_set_time)


def _json_values(*, valid: bool) -> st.SearchStrategy[Any]:
    if valid:
        return st.one_of(st.text(alphabet=string.ascii_letters, max_size=8), st.integers(0, 100).map(float))
    keys = st.one_of(st.text(max_size=10), st.sampled_from(STRUCT_KEYS))
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),
        st.sampled_from(FLOAT_EDGES),
        st.sampled_from(HOSTILE),
        st.text(max_size=20),
    )
    return st.recursive(
        leaves, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=3), max_leaves=10
    )


def _nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"leaf": "bottom"}
    for _ in range(depth):
        doc = {"k": doc}
    return doc


def _documents(*, valid: bool) -> st.SearchStrategy[dict[str, Any]]:
    if valid:
        return st.dictionaries(st.sampled_from(("k", "note")), _json_values(valid=True), max_size=2)
    keys = st.one_of(st.text(max_size=10), st.sampled_from(STRUCT_KEYS))
    return weighted(
        (4, st.dictionaries(keys, _json_values(valid=False), max_size=4)),
        (1, st.sampled_from(STRUCT_DEPTHS).map(_nested)),
    )


def _set_struct(doc: dict[str, Any]) -> Filler:
    def fill(target: Message) -> None:
        target.update(doc)  # type: ignore[attr-defined]

    return fill


def _set_value(value: Any) -> Filler:
    def fill(target: Message) -> None:
        t: Any = target
        if value is None:
            t.null_value = struct_pb2.NULL_VALUE
        elif isinstance(value, bool):
            t.bool_value = value
        elif isinstance(value, int | float):
            t.number_value = value
        elif isinstance(value, str):
            t.string_value = value
        elif isinstance(value, dict):
            t.struct_value.SetInParent()
            t.struct_value.update(value)
        else:
            t.list_value.SetInParent()
            t.list_value.extend(value)

    return fill


def _set_list(items: list[Any]) -> Filler:
    def fill(target: Message) -> None:
        target.extend(items)  # type: ignore[attr-defined]

    return fill


def structs(*, valid: bool) -> st.SearchStrategy[Filler]:
    return _documents(valid=valid).map(_set_struct)


def values(*, valid: bool) -> st.SearchStrategy[Filler]:
    return st.one_of(_json_values(valid=valid), _documents(valid=valid)).map(_set_value)


def list_values(*, valid: bool) -> st.SearchStrategy[Filler]:
    return st.lists(st.one_of(_json_values(valid=valid), _documents(valid=valid)), max_size=4).map(_set_list)


WELL_KNOWN: dict[str, Callable[..., st.SearchStrategy[Filler]]] = {
    "google.protobuf.Timestamp": timestamps,
    "google.protobuf.Duration": durations,
    "google.protobuf.Struct": structs,
    "google.protobuf.Value": values,
    "google.protobuf.ListValue": list_values,
}


# Any message, from its descriptor


def _is_map(fd: descriptor.FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _single(fd: descriptor.FieldDescriptor, pool: Pool, *, valid: bool, depth: int) -> st.SearchStrategy[Any]:
    """One value of the field's type: a Filler for a message, else a Python scalar."""
    if fd.type == F.TYPE_MESSAGE:
        return fillers(fd.message_type, pool, valid=valid, depth=depth + 1)
    if fd.type == F.TYPE_ENUM:
        return enums(fd.enum_type, valid=valid)
    if fd.type == F.TYPE_STRING:
        return strings(fd.name, pool, valid=valid)
    if fd.type == F.TYPE_BYTES:
        return byte_strings(valid=valid)
    if fd.type == F.TYPE_BOOL:
        return st.booleans()
    if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return floats(fd.type, valid=valid)
    return integers(fd.type, valid=valid)


def _set_map(fd: descriptor.FieldDescriptor, items: dict[Any, Any]) -> Filler:
    def fill(target: Message) -> None:
        container = getattr(target, fd.name)
        for key, item in items.items():
            if callable(item):
                item(container[key])
            else:
                container[key] = item

    return fill


def _set_repeated(fd: descriptor.FieldDescriptor, drawn: tuple[list[Any], int]) -> Filler:
    """Each element in turn; a huge count repeats the one drawn element, within HUGE_BYTES."""
    elements, count = drawn

    def fill(target: Message) -> None:
        container = getattr(target, fd.name)
        if fd.type != F.TYPE_MESSAGE:
            size = max((len(e) if isinstance(e, str | bytes) else 8 for e in elements), default=0) + 2
            container.extend((elements * count)[: max(len(elements), min(len(elements) * count, HUGE_BYTES // size))])
            return
        for element in elements:
            element(container.add())
        if count > 1 and elements:
            budget = max(0, min(count - 1, HUGE_BYTES // (container[0].ByteSize() + 2)))
            for _ in range(budget):
                elements[0](container.add())

    return fill


def _set_single(fd: descriptor.FieldDescriptor, value: Any) -> Filler:
    def fill(target: Message) -> None:
        if fd.type == F.TYPE_MESSAGE:
            child = getattr(target, fd.name)
            child.SetInParent()
            value(child)
        else:
            setattr(target, fd.name, value)

    return fill


def field_fillers(fd: descriptor.FieldDescriptor, pool: Pool, *, valid: bool, depth: int) -> st.SearchStrategy[Filler]:
    """Fillers setting one field: a map from drawn entries, a repeated field empty, short or huge."""
    if _is_map(fd):
        entry = fd.message_type
        keys = _single(entry.fields_by_name["key"], pool, valid=valid, depth=depth)
        items = _single(entry.fields_by_name["value"], pool, valid=valid, depth=depth)
        return st.dictionaries(keys, items, min_size=1 if valid else 0, max_size=3).map(functools.partial(_set_map, fd))
    element = _single(fd, pool, valid=valid, depth=depth)
    if not fd.is_repeated:
        return element.map(functools.partial(_set_single, fd))
    if valid:
        drawn = st.tuples(st.lists(element, min_size=1, max_size=3), st.just(1))
    else:
        drawn = weighted(
            (3, st.tuples(st.just([]), st.just(1))),
            (4, st.tuples(st.lists(element, min_size=1, max_size=3), st.just(1))),
            (1, st.tuples(element.map(lambda e: [e]), st.sampled_from(HUGE_COUNTS))),
        )
    return drawn.map(functools.partial(_set_repeated, fd))


def _real_oneofs(desc: descriptor.Descriptor) -> list[descriptor.OneofDescriptor]:
    """Declared oneofs, without the synthetic ones that proto3 `optional` fields get."""
    return [o for o in desc.oneofs if not (len(o.fields) == 1 and o.name == "_" + o.fields[0].name)]


def _nothing(target: Message) -> None:
    return None


def fillers(desc: descriptor.Descriptor, pool: Pool, *, valid: bool, depth: int = 0) -> st.SearchStrategy[Filler]:
    """Fillers for a message of type `desc`, every field drawn from what its descriptor says it is."""
    if desc.full_name in WELL_KNOWN:
        return WELL_KNOWN[desc.full_name](valid=valid)
    if depth > MAX_DEPTH:
        return st.just(_nothing)
    unset = st.just(_nothing)
    parts: list[st.SearchStrategy[Filler]] = []
    in_oneof: set[str] = set()
    for oneof in _real_oneofs(desc):
        in_oneof.update(fd.name for fd in oneof.fields)
        members = st.one_of([field_fillers(fd, pool, valid=valid, depth=depth) for fd in oneof.fields])
        parts.append(members if valid else weighted((1, unset), (3, members)))
    for fd in desc.fields:
        if fd.name not in in_oneof:
            one = field_fillers(fd, pool, valid=valid, depth=depth)
            parts.append(one if valid else weighted((1, unset), (3, one)))
    return st.tuples(*parts).map(lambda steps: _fills(*steps))


def _built(desc: descriptor.Descriptor, fill: st.SearchStrategy[Filler]) -> st.SearchStrategy[Message]:
    cls = message_class(desc)

    def build(fill: Filler) -> Message:
        message = cls()
        fill(message)
        return message

    return fill.map(build)


def messages(desc: descriptor.Descriptor, pool: Pool, *, valid: bool) -> st.SearchStrategy[Message]:
    """Messages of type `desc` (see `fillers`)."""
    return _built(desc, fillers(desc, pool, valid=valid))


def mutants(desc: descriptor.Descriptor, pool: Pool) -> st.SearchStrategy[Message]:
    """A plausible message with one top-level field then cleared or drawn as a hostile value: reaches
    past the checks that a fully hostile request fails first."""
    fields = list(desc.fields)
    if not fields:
        return messages(desc, pool, valid=True)

    def cleared(fd: descriptor.FieldDescriptor) -> Filler:
        return lambda target: target.ClearField(fd.name)

    def one_field(fd: descriptor.FieldDescriptor) -> st.SearchStrategy[Filler]:
        return weighted((3, field_fillers(fd, pool, valid=False, depth=0)), (1, st.just(cleared(fd))))

    hostile = st.sampled_from(fields).flatmap(one_field)
    return _built(desc, st.tuples(fillers(desc, pool, valid=True), hostile).map(lambda steps: _fills(*steps)))


# Calls


@dataclass(frozen=True)
class CallPlan:
    """One call: its request messages, its metadata and how many stream items to read."""

    requests: tuple[Message, ...]
    metadata: tuple[tuple[str, str], ...]
    forged: bool
    reads: int

    def __repr__(self) -> str:
        shown = " | ".join(describe(m) for m in self.requests[:4])
        more = f" (+{len(self.requests) - 4} more messages)" if len(self.requests) > 4 else ""
        auth = f" forged-auth={self.metadata!r}" if self.forged else ""
        return f"[{len(self.requests)} message(s)] {shown}{more}{auth}"


_LONG_STRING = re.compile(r'"((?:[^"\\]|\\.){40})(?:[^"\\]|\\.){40,}"')


def describe(message: Message) -> str:
    """A one-line text form of `message` with long strings and the text itself cut (for failure reports)."""
    counts = [f"{fd.name}: {len(v)} items" for fd, v in message.ListFields() if fd.is_repeated and len(v) > 3]
    try:
        text = text_format.MessageToString(message, as_one_line=True, as_utf8=True)
    except DecodeError:  # nested too deep for protobuf to walk: name the top-level fields only
        text = " ".join(f"{fd.name}: …" for fd, _ in message.ListFields()) + f" ({message.ByteSize()} bytes, deep)"
    text = _LONG_STRING.sub(lambda m: f'"{m.group(1)}…"', text)
    return f"{type(message).__name__}{{{text[:1_500]}}}" + "".join(f" [{c}]" for c in counts)


def _auth(pool: Pool) -> st.SearchStrategy[tuple[tuple[tuple[str, str], ...], bool]]:
    key = pool.own_key
    garbage = st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=60)

    def one_char_changed(i: int) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key[:i]}{'B' if key[i] == 'A' else 'A'}{key[i + 1 :]}"),)

    forged = st.one_of(
        st.just(()),
        st.just((("authorization", "Bearer "),)),
        garbage.map(lambda g: (("authorization", f"Bearer {g}"),)),
        garbage.map(lambda g: (("authorization", f"Bearer mk_{g}"),)),
        garbage.map(lambda g: (("x-api-key", g),)),
        st.integers(min_value=0, max_value=len(key) - 1).map(one_char_changed),
        st.just((("authorization", f"Basic {key}"),)),
        st.just((("authorization", f"Bearer {key[:-1]}"),)),
        st.just((("authorization", f"Bearer {key.upper()}"),)),
    )
    own = ((("authorization", f"Bearer {key}"),), False)
    return weighted((9, st.just(own)), (1, forged.map(lambda md: (md, True))))


def calls(rpc: Rpc, pool: Pool) -> st.SearchStrategy[CallPlan]:
    """Calls of `rpc` with hostile, partly hostile (`mutants`) or plausible requests; a client stream
    also gets no message, good messages then a bad one, and floods of one good message."""
    good = messages(rpc.method.input_type, pool, valid=True)
    fuzzed = weighted(
        (3, messages(rpc.method.input_type, pool, valid=False)),
        (3, mutants(rpc.method.input_type, pool)),
        (1, good),
    )
    if rpc.client_streaming:
        requests = weighted(
            (1, st.just([])),
            (3, st.lists(fuzzed, min_size=1, max_size=3)),
            (2, st.lists(good, min_size=1, max_size=3)),
            (3, st.tuples(st.lists(good, min_size=1, max_size=3), fuzzed).map(lambda t: [*t[0], t[1]])),
            (1, st.tuples(good, st.sampled_from(STREAM_COUNTS)).map(lambda t: [t[0]] * t[1])),
        )
    else:
        requests = fuzzed.map(lambda m: [m])
    return st.builds(
        lambda reqs, auth, reads: CallPlan(tuple(reqs), auth[0], auth[1], reads),
        requests,
        _auth(pool),
        st.integers(min_value=1, max_value=5),
    )
