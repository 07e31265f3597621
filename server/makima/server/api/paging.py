"""Page sizes, opaque signed page tokens and list filters shared by every paginated RPC (AIP-158)."""

from __future__ import annotations

import base64
import functools
import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from makima.server.domain.errors import InvalidArgument
from makima.server.domain.page_tokens import PageTokenKeys, TokenScope
from makima.server.domain.runtime import Principal
from makima.server.store.checkpoints import NewestKey

if TYPE_CHECKING:
    # The generic base of every generated enum class's metaclass; it exists in the stubs only.
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(value: int) -> int:
    """0 means the default; above the maximum is clamped; negative is an error."""
    if value < 0:
        raise InvalidArgument.of("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


# Our tokens are under 200 characters; anything much longer is refused before any work.
MAX_TOKEN_LENGTH = 1024
INT64_MAX = 2**63 - 1


def _malformed() -> InvalidArgument:
    return InvalidArgument.of("page_token", "is malformed")


@functools.cache
def _rpc_of(request_type: Descriptor) -> str:
    """The full name of the RPC that takes `request_type` (one request message per RPC)."""
    for service in request_type.file.services_by_name.values():
        for method in service.methods:
            if method.input_type is request_type:
                return f"/{service.full_name}/{method.name}"
    raise LookupError(f"no RPC takes {request_type.full_name}")


def _scope(request: Message, principal: Principal) -> TokenScope:
    """What a token is valid for: this RPC, this owner, and the same filters (page size may change)."""
    bare = type(request)()
    bare.CopyFrom(request)
    for name in ("page_token", "page_size"):
        bare.ClearField(name)
    return TokenScope(
        rpc=_rpc_of(bare.DESCRIPTOR),
        owner_id=principal.owner_id,
        filters=bare.SerializeToString(deterministic=True),
    )


async def encode_token(keys: PageTokenKeys, request: Message, principal: Principal, key: list[Any]) -> str:
    """The signed, opaque token of the page after `key`."""
    payload = json.dumps(key, separators=(",", ":")).encode()
    sealed = await keys.seal(_scope(request, principal), payload)
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


async def decode_token(keys: PageTokenKeys, request: Message, principal: Principal) -> list[Any] | None:
    """The key in `request.page_token` once its signature checks out, or None for the first page.

    The key still goes through a strict check of its own (`token_position`, `token_newest`).
    """
    # Every list request has `page_token`; `Message` declares no fields (hence the ignore).
    token: str = request.page_token  # type: ignore[attr-defined]
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise _malformed()
    try:
        sealed = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except ValueError:
        raise _malformed() from None
    payload = await keys.open(_scope(request, principal), sealed)
    try:
        key = json.loads(payload)
    except ValueError:
        raise _malformed() from None
    if not isinstance(key, list):
        raise _malformed()
    return key


def token_position(key: list[Any] | None, default: int) -> int:
    """A position, cursor or sequence from a token: one integer in [0, 2^63 - 1]."""
    if key is None:
        return default
    if len(key) != 1 or type(key[0]) is not int or not 0 <= key[0] <= INT64_MAX:
        raise _malformed()
    return key[0]


def token_newest(key: list[Any] | None) -> NewestKey | None:
    """A (create_time, id) keyset of a newest-first list: a timezone-aware time and a UUID."""
    if key is None:
        return None
    if len(key) != 2 or not all(isinstance(part, str) for part in key):
        raise _malformed()
    try:
        time, row_id = datetime.fromisoformat(key[0]), uuid.UUID(key[1])
        if time.utcoffset() is None:
            raise ValueError("naive datetime")
        return time.astimezone(UTC), row_id
    except (ValueError, OverflowError):
        raise _malformed() from None


def time_range(request: Message) -> tuple[datetime | None, datetime | None]:
    """The optional [start_time, end_time) of a request; an inverted range is an error."""
    # `Message` declares no fields, so reading these two by name needs the ignores.
    start = request.start_time.ToDatetime(tzinfo=UTC) if request.HasField("start_time") else None  # type: ignore[attr-defined]
    end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None  # type: ignore[attr-defined]
    if start is not None and end is not None and start > end:
        raise InvalidArgument.of("end_time", "must not be before start_time")
    return start, end


def kinds(values: Iterable[int], wrapper: _EnumTypeWrapper[Any], prefix: str, field: str = "kinds") -> tuple[str, ...]:
    """Repeated enum filter -> stored lowercase names; UNSPECIFIED or unknown numbers are errors
    naming `field` and the index."""
    out = []
    for i, number in enumerate(values):
        try:
            name = wrapper.Name(number)
        except ValueError:
            name = ""
        if not name or name.endswith("_UNSPECIFIED"):
            raise InvalidArgument.of(f"{field}[{i}]", f"is not a valid {prefix.lower()} ({number})")
        out.append(name.removeprefix(prefix + "_").lower())
    return tuple(sorted(set(out)))
