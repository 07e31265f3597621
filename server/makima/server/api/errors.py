"""The one place that turns errors into gRPC statuses with google.rpc error details."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from makima.server.api.convert import valid_text
from makima.server.domain import errors

log = logging.getLogger(__name__)
DOMAIN = "makima"

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def as_domain_error(exc: BaseException, method: str) -> errors.DomainError:
    """`exc` as the domain error the client will see; an unexpected one is a generic INTERNAL (trace logged)."""
    if isinstance(exc, errors.DomainError):
        return exc
    if isinstance(exc, NotImplementedError):
        return errors.Unimplemented(f"{method} is not implemented yet", metadata={"method": method})
    log.error("unexpected error in %s", method, exc_info=exc)
    return errors.DomainError("internal error", reason="INTERNAL")


def status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, grpc.Status]:
    """The status to answer with (see `as_domain_error`)."""
    exc = as_domain_error(exc, method)
    code = _CODES.get(type(exc), grpc.StatusCode.INTERNAL)
    metadata = {valid_text(k): valid_text(v) for k, v in exc.metadata.items()}
    details = [_pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=metadata))]
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=valid_text(v.field), description=valid_text(v.description)
                        )
                        for v in exc.violations
                    ]
                )
            )
        )
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=valid_text(exc.message), details=details)
    return code, rpc_status.to_status(status)
