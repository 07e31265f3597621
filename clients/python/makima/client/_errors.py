"""Typed errors built from the google.rpc.Status details that the makima server attaches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

FieldViolation: TypeAlias = error_details_pb2.BadRequest.FieldViolation


class MakimaError(Exception):
    """A failed makima call: its gRPC code, message and decoded error details.

    `reason` is the ErrorInfo reason (UPPER_SNAKE, e.g. ALREADY_RUNNING), or the code's name when the
    failure came from the transport and carries no ErrorInfo; `metadata` holds every dynamic value of
    the message; `field_violations` names the bad request fields of an INVALID_ARGUMENT.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"


class NotFoundError(MakimaError):
    """NOT_FOUND: the resource does not exist or belongs to another owner."""


class InvalidArgumentError(MakimaError):
    """INVALID_ARGUMENT: a request field is malformed; see `field_violations`."""


class AlreadyExistsError(MakimaError):
    """ALREADY_EXISTS: the resource to create is already there."""


class FailedPreconditionError(MakimaError):
    """FAILED_PRECONDITION: the resource is not in a state that allows the call (e.g. ALREADY_RUNNING)."""


class AbortedError(MakimaError):
    """ABORTED: an optimistic-concurrency check failed; nothing was written."""


class UnauthenticatedError(MakimaError):
    """UNAUTHENTICATED: the API key is missing or invalid."""


class UnavailableError(MakimaError):
    """UNAVAILABLE: the server or its database could not be reached, after every allowed retry."""


class UnimplementedError(MakimaError):
    """UNIMPLEMENTED: the server does not offer this call (yet)."""


class ResourceExhaustedError(MakimaError):
    """RESOURCE_EXHAUSTED: a size limit was passed (the message names it), or the workspace or the
    database is full (reason WORKSPACE_FULL, DATABASE_FULL)."""


class InternalError(MakimaError):
    """INTERNAL: the server failed unexpectedly."""


class DeadlineExceededError(MakimaError):
    """DEADLINE_EXCEEDED: the call's deadline passed before an answer came."""


_BY_CODE: dict[grpc.StatusCode, type[MakimaError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def error_from_rpc(err: grpc.RpcError) -> MakimaError:
    """The typed error of a failed call (sync or grpc.aio), decoded from its rich status."""
    code = err.code()
    message = err.details() or ""
    info = error_details_pb2.ErrorInfo()
    bad_request = error_details_pb2.BadRequest()
    status: status_pb2.Status | None
    try:
        # from_call reads only code(), details() and trailing_metadata(), which every RpcError has; its
        # stubs ask for a grpc.Call, which grpc.aio's errors are not.
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:  # trailers that contradict the status line: trust the status line only
        status = None
    for detail in status.details if status is not None else ():
        if not detail.Unpack(info):  # Unpack fills a message only from a detail of its own type
            detail.Unpack(bad_request)
    return _BY_CODE.get(code, MakimaError)(
        code,
        message,
        reason=info.reason,
        metadata=info.metadata,
        field_violations=bad_request.field_violations,
    )
