"""One server interceptor for every RPC: authentication, error mapping and the access log.

It wraps each method handler rather than only inspecting the call, so that the principal it sets
is visible to the servicer (same task and context) and every exception a servicer raises goes
through `errors.status_for` before it reaches the client.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from makima.server.api.errors import status_for
from makima.server.domain.auth import Authenticator
from makima.server.domain.runtime import Principal

access_log = logging.getLogger("makima.server.access")
_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("makima_principal")
# Health checks and reflection are open: load balancers and grpcurl call them without a key.
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def current_principal() -> Principal:
    """The caller of the RPC being served (set by the interceptor before the servicer runs)."""
    return _principal.get()


def api_key_from(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The key of `authorization: Bearer <key>` or `x-api-key: <key>`, if any."""
    for key, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "x-api-key":
            return text.strip()
        if key == "authorization" and text[:7].lower() == "bearer ":
            return text[7:].strip()
    return None


class ServiceInterceptor(aio.ServerInterceptor):
    """Authenticates, maps errors to rich statuses and logs one line per RPC."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        secured = not method.startswith(_OPEN_PREFIXES)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, secured),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, secured),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, secured),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, method, secured),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _begin(self, context: aio.ServicerContext, secured: bool) -> None:
        if secured:
            _principal.set(await self._auth.authenticate(api_key_from(context.invocation_metadata())))

    def _unary(self, behavior: Callable[..., Any], method: str, secured: bool) -> Callable[..., Any]:
        async def handle(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            peer = context.peer()  # read now: grpc may crash reading it after a cancellation
            code = grpc.StatusCode.OK
            try:
                await self._begin(context, secured)
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                code = _code_of(exc, context)
                if code is None:
                    code, status = status_for(exc, method)
                    await context.abort_with_status(status)
                raise
            finally:
                _log(method, code, started, peer)

        return handle

    def _stream(self, behavior: Callable[..., Any], method: str, secured: bool) -> Callable[..., Any]:
        async def handle(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            peer = context.peer()  # read now: grpc may crash reading it after a cancellation
            code = grpc.StatusCode.OK
            try:
                await self._begin(context, secured)
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                code = _code_of(exc, context)
                if code is None:
                    code, status = status_for(exc, method)
                    await context.abort_with_status(status)
                raise
            finally:
                _log(method, code, started, peer)

        return handle


def _code_of(exc: BaseException, context: aio.ServicerContext) -> grpc.StatusCode | None:
    """The code of a call already ended (cancelled or aborted); None if `exc` must be mapped."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    return None


def _log(method: str, code: grpc.StatusCode, started: float, peer: str) -> None:
    access_log.info(
        "rpc",
        extra={
            "rpc_method": method,
            "rpc_code": code.name,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "peer": peer,
        },
    )
