"""Page sizes, opaque page tokens and list filters shared by every paginated RPC (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from makima.server.domain.errors import InvalidArgument
from makima.server.domain.runtime import Principal

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(value: int) -> int:
    """0 means the default; above the maximum is clamped; negative is an error."""
    if value < 0:
        raise InvalidArgument.of("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _scope(request: Message, principal: Principal) -> str:
    """What a token is valid for: this RPC, this owner, and the same filters (page size may change)."""
    bare = type(request)()
    bare.CopyFrom(request)
    for name in ("page_token", "page_size"):
        bare.ClearField(name)  # type: ignore[arg-type]
    digest = hashlib.sha256(principal.owner_id.bytes + bare.DESCRIPTOR.full_name.encode())
    digest.update(bare.SerializeToString(deterministic=True))
    return digest.hexdigest()[:24]


def encode_token(request: Message, principal: Principal, key: list[Any]) -> str:
    payload = json.dumps({"s": _scope(request, principal), "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(request: Message, principal: Principal) -> list[Any] | None:
    """The key stored in `request.page_token`, or None for the first page."""
    token: str = request.page_token  # type: ignore[attr-defined]
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        scope, key = data["s"], data["k"]
        if not isinstance(key, list):
            raise TypeError
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InvalidArgument.of("page_token", "is malformed") from None
    if scope != _scope(request, principal):
        raise InvalidArgument.of("page_token", "belongs to another list or to other filters")
    return key


def token_int(key: list[Any] | None, default: int) -> int:
    if key is None:
        return default
    if len(key) != 1 or not isinstance(key[0], int) or isinstance(key[0], bool):
        raise InvalidArgument.of("page_token", "is malformed")
    return key[0]


def time_range(request: Message) -> tuple[datetime | None, datetime | None]:
    """The optional [start_time, end_time) of a request; an inverted range is an error."""
    start = request.start_time.ToDatetime(tzinfo=UTC) if request.HasField("start_time") else None  # type: ignore[attr-defined]
    end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None  # type: ignore[attr-defined]
    if start is not None and end is not None and start > end:
        raise InvalidArgument.of("end_time", "must not be before start_time")
    return start, end


def kinds(values: Any, wrapper: EnumTypeWrapper, prefix: str) -> tuple[str, ...]:
    """Repeated enum filter -> stored lowercase names; UNSPECIFIED or unknown numbers are errors."""
    out = []
    for i, number in enumerate(values):
        try:
            name = wrapper.Name(number)
        except ValueError:
            name = ""
        if not name or name.endswith("_UNSPECIFIED"):
            raise InvalidArgument.of(f"kinds[{i}]", f"is not a valid {prefix.lower()} ({number})")
        out.append(name.removeprefix(prefix + "_").lower())
    return tuple(sorted(set(out)))
