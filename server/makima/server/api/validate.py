"""Request field checks; each failure is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import uuid

from makima.server.domain.errors import InvalidArgument

MAX_NAME = 500
MAX_PHASE = 200


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


def text_field(value: str, name: str, *, max_length: int, required: bool = True) -> str:
    """A text field: stripped, non-empty when required, bounded in length."""
    text = value.strip()
    if required and not text:
        raise InvalidArgument.of(name, "must not be empty")
    if len(text) > max_length:
        raise InvalidArgument.of(name, f"must be at most {max_length} characters")
    return text
