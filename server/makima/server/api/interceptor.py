"""One server interceptor for every RPC: authentication, request checks, error mapping and the access log.

It wraps each method handler rather than only inspecting the call, so that the principal it sets
is visible to the servicer (same task and context), every request message (each one of a client
stream too) passes `checks.check_request` before the servicer sees it, and every exception a
servicer raises goes through `errors.status_for` before it reaches the client. It also replaces the
request deserializer: bytes that do not parse become INVALID_ARGUMENT (reason MALFORMED_REQUEST)
instead of grpc's UNKNOWN with a logged traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from makima.server import telemetry
from makima.server.api.checks import check_request
from makima.server.api.errors import as_domain_error, status_for
from makima.server.domain.auth import Authenticator
from makima.server.domain.errors import InvalidArgument
from makima.server.domain.runtime import Principal

access_log = logging.getLogger("makima.server.access")
_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("makima_principal")
# The interceptor serves every method, whatever its message types.
ServicerContext: TypeAlias = "aio.ServicerContext[Any, Any]"
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
# Health checks and reflection are open: load balancers and grpcurl call them without a key.
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# grpc's factory of each handler kind, by (request streaming, response streaming).
_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True)
class _Route:
    """What the wrapper of one method needs to know about it."""

    method: str
    secured: bool  # needs an API key
    request_streaming: bool


class _Undecodable:
    """What the deserializer hands over in place of a request whose bytes do not parse."""


_UNDECODABLE = _Undecodable()


def current_principal() -> Principal:
    """The caller of the RPC being served (set by the interceptor before the servicer runs)."""
    return _principal.get()


def api_key_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The key of `authorization: Bearer <key>` or `x-api-key: <key>`, if any."""
    for key, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "x-api-key":
            return text.strip()
        if key == "authorization" and text[:7].lower() == "bearer ":
            return text[7:].strip()
    return None


class ServiceInterceptor(aio.ServerInterceptor):
    """Authenticates, maps errors to rich statuses, logs one line per RPC, and counts and traces it
    when metrics (`telemetry.METRICS`) or traces (`tracer`) are on."""

    def __init__(self, authenticator: Authenticator, *, tracer: Tracer | None = None) -> None:
        self._auth = authenticator
        self._tracer = tracer

    @contextlib.contextmanager
    def _observed(self, method: str, outcome: _Outcome, context: ServicerContext, *, streaming: bool) -> Iterator[None]:
        """Around one call: its access-log line, its metrics and its span (each only when switched on)."""
        started = time.perf_counter()
        peer = context.peer()  # read now: grpc may crash reading it after a cancellation
        metrics = telemetry.METRICS
        if metrics is not None and streaming:
            metrics.streams.labels(method).inc()
        span_scope: contextlib.AbstractContextManager[Span | None] = contextlib.nullcontext()
        if self._tracer is not None:
            service, _, name = method.strip("/").rpartition("/")
            span_scope = self._tracer.start_as_current_span(
                method,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
                record_exception=False,
                set_status_on_exception=False,
            )
        with span_scope as span:
            try:
                yield
            finally:
                seconds = time.perf_counter() - started
                _log(method, outcome, seconds, peer)
                if metrics is not None:
                    metrics.rpcs.labels(method, outcome.code.name).inc()
                    metrics.latency.labels(method).observe(seconds)
                    if streaming:
                        metrics.streams.labels(method).dec()
                if span is not None:
                    span.set_attribute("rpc.grpc.status_code", outcome.code.value[0])
                    if outcome.code != grpc.StatusCode.OK:
                        span.set_status(Status(StatusCode.ERROR, f"{outcome.reason}: {outcome.message}"))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        route = _Route(method, not method.startswith(_OPEN_PREFIXES), handler.request_streaming)
        shape = (handler.request_streaming, handler.response_streaming)
        behavior = getattr(handler, ("stream" if shape[0] else "unary") + "_" + ("stream" if shape[1] else "unary"))
        wrap = self._stream if handler.response_streaming else self._unary
        return _FACTORIES[shape](
            wrap(behavior, route),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    async def _begin(self, request: Any, context: ServicerContext, route: _Route) -> Any:
        """Authenticate, then hand over the request checked (a client stream: each message as it comes)."""
        if route.secured:
            _principal.set(await self._auth.authenticate(api_key_from(context.invocation_metadata())))
        if route.request_streaming:
            return _checked_stream(request, route.method)
        return _checked(request, route.method)

    def _unary(self, behavior: Callable[..., Any], route: _Route) -> Callable[..., Any]:
        async def handle(request: Any, context: ServicerContext) -> Any:
            outcome = _Outcome()
            received = request
            with self._observed(route.method, outcome, context, streaming=False):
                try:
                    request = await self._begin(request, context, route)
                    result = behavior(request, context)
                    return await result if inspect.isawaitable(result) else result
                except BaseException as exc:
                    status = outcome.failed(exc, context, route.method)
                    if status is not None:
                        if route.request_streaming:
                            await _drain(received)
                        await context.abort_with_status(status)
                    raise

        return handle

    def _stream(self, behavior: Callable[..., Any], route: _Route) -> Callable[..., Any]:
        async def handle(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            outcome = _Outcome()
            with self._observed(route.method, outcome, context, streaming=True):
                try:
                    request = await self._begin(request, context, route)
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:
                    status = outcome.failed(exc, context, route.method)
                    if status is not None:
                        await context.abort_with_status(status)
                    raise

        return handle


# How much of a refused client stream is read before answering (see `_drain`).
_DRAIN_MESSAGES = 10_000
_DRAIN_SECONDS = 5.0


async def _drain(requests: AsyncIterator[Any]) -> None:
    """Read what the client still sends of a refused stream (bounded) before the error is answered.

    A grpc.aio client that is still writing when the server ends the call sees its own write fail
    and reports INTERNAL "Internal error from Core" instead of the server's status
    (grpc/grpc#36066). Letting the client finish its stream first gives it the real error.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_DRAIN_SECONDS):
            count = 0
            async for _ in requests:
                count += 1
                if count >= _DRAIN_MESSAGES:
                    return


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer` that never raises: undecodable bytes become `_UNDECODABLE`, refused by `_checked`.

    grpc answers UNKNOWN and logs a traceback when its deserializer raises; the call must instead end
    as an INVALID_ARGUMENT through the interceptor, like any other bad request.
    """
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or upb's depth and UTF-8 checks: all mean "not this message"
            return _UNDECODABLE

    return deserialize


def _checked(request: Any, method: str) -> Any:
    if request is _UNDECODABLE:
        raise InvalidArgument(
            f"the request bytes are not a valid request message of {method}",
            reason="MALFORMED_REQUEST",
            metadata={"method": method},
        )
    if isinstance(request, Message):
        check_request(request)
    return request


async def _checked_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request, method)


@dataclass
class _Outcome:
    """How one call ended, for its access-log line: a failure carries its reason and message."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str | None = None
    message: str | None = None

    def failed(self, exc: BaseException, context: ServicerContext, method: str) -> grpc.Status | None:
        """Record how `exc` ended the call; the status to answer with, or None if the call has ended already."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code, self.reason = grpc.StatusCode.CANCELLED, "CANCELLED"
            return None
        if isinstance(exc, aio.AbortError):
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            self.reason, self.message = self.code.name, context.details()
            return None
        error = as_domain_error(exc, method)
        self.code, status = status_for(error, method)
        self.reason, self.message = error.reason, error.message
        return status


def _log(method: str, outcome: _Outcome, seconds: float, peer: str) -> None:
    """One line per call; a failed call's line also names its owner, reason and message."""
    extra: dict[str, Any] = {
        "rpc_method": method,
        "rpc_code": outcome.code.name,
        "duration_ms": round(seconds * 1000, 3),
        "peer": peer,
    }
    if outcome.code != grpc.StatusCode.OK:
        principal = _principal.get(None)
        extra |= {
            "owner_id": None if principal is None else str(principal.owner_id),
            "reason": outcome.reason,
            "error": outcome.message,
        }
    access_log.info("rpc", extra=extra)
