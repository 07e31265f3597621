"""The one error hierarchy of the service; the api layer maps each class to a gRPC status.

Every error has an UPPER_SNAKE `reason` and string `metadata` (every dynamic value of the message
is also in the metadata, per AIP-193).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field (becomes a google.rpc.BadRequest field violation)."""

    field: str
    description: str


@dataclass(eq=False)
class DomainError(Exception):
    """Base of all expected failures of a use case."""

    message: str
    reason: str = "ERROR"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass(eq=False)
class InvalidArgument(DomainError):
    """A request field is malformed or out of range."""

    reason: str = "INVALID_ARGUMENT"
    violations: list[FieldViolation] = field(default_factory=list)

    @classmethod
    def of(cls, field_name: str, description: str, *, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
        return cls(
            f"{field_name}: {description}",
            reason=reason,
            metadata={"field": field_name},
            violations=[FieldViolation(field_name, description)],
        )


@dataclass(eq=False)
class NotFound(DomainError):
    """The resource does not exist or belongs to another owner (never tell which)."""

    reason: str = "NOT_FOUND"

    @classmethod
    def resource(cls, kind: str, resource_id: object, *, reason: str = "NOT_FOUND") -> NotFound:
        return cls(f"{kind} {resource_id} not found", reason=reason, metadata={kind: str(resource_id)})


@dataclass(eq=False)
class AlreadyExists(DomainError):
    reason: str = "ALREADY_EXISTS"


@dataclass(eq=False)
class FailedPrecondition(DomainError):
    reason: str = "FAILED_PRECONDITION"


@dataclass(eq=False)
class Aborted(DomainError):
    """An optimistic-concurrency check failed; nothing was written."""

    reason: str = "ABORTED"


@dataclass(eq=False)
class Unauthenticated(DomainError):
    reason: str = "UNAUTHENTICATED"


@dataclass(eq=False)
class ResourceExhausted(DomainError):
    """Storage the call needs is full (a disk, a quota); retrying helps only once space is freed."""

    reason: str = "RESOURCE_EXHAUSTED"


@dataclass(eq=False)
class Unavailable(DomainError):
    """The database cannot be reached; the call may be retried."""

    reason: str = "DATABASE_UNAVAILABLE"


@dataclass(eq=False)
class Unimplemented(DomainError):
    reason: str = "UNIMPLEMENTED"
