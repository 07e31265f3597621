"""Request field checks of one servicer's fields; each failure is INVALID_ARGUMENT naming the field.

Sizes, NUL characters and value ranges of every field are checked once for all by `checks` (limits
declared in limits.proto), before a servicer runs; these are the checks of meaning.
"""

from __future__ import annotations

import uuid

from makima.server.domain.errors import InvalidArgument


def uuid_field(value: str, name: str) -> uuid.UUID:
    """A required UUID field."""
    if not value:
        raise InvalidArgument.of(name, "is required")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument.of(name, f"is not a valid UUID: {value[:64]!r}") from None


def optional_uuid(value: str, name: str) -> uuid.UUID | None:
    """A UUID field that may be empty."""
    return uuid_field(value, name) if value else None


def text_field(value: str, name: str, *, required: bool = True) -> str:
    """A text field: stripped, non-empty when required (its length limit is declared in the proto)."""
    text = value.strip()
    if required and not text:
        raise InvalidArgument.of(name, "must not be empty")
    return text
