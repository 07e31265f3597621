"""What every servicer shares: the runtime and the idempotent mutation helper."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Self, TypeVar

from makima.server.api.interceptor import current_principal
from makima.server.api.validate import optional_uuid
from makima.server.domain.runtime import Caller, Idempotency, Runtime, Tx, fingerprint


class _Response(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...

    @classmethod
    def FromString(cls, s: bytes) -> Self: ...


R = TypeVar("R", bound=_Response)
In = TypeVar("In")
Out = TypeVar("Out")


class Servicer:
    """Base of the makima.v1 servicers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def mutate(self, request: Any, response_type: type[R], body: Callable[[Tx], Awaitable[R]]) -> R:
        """Run a mutating use case; with a request_id, a retry replays the first answer."""
        return await self.rt.mutate(current_principal(), body, idempotency(request, response_type))

    async def call(self, use_case: Callable[[Caller, In], Awaitable[Out]], inp: In) -> Out:
        """Run a use case that is not one write transaction (a read, a long poll) for the RPC's caller."""
        return await use_case(self.caller(), inp)

    def caller(self) -> Caller:
        """The runtime as the RPC's caller uses it."""
        return Caller(self.rt, current_principal())


def idempotency(request: Any, response_type: type[R]) -> Idempotency[R] | None:
    """How to store and replay the answer to `request`, if it carries a request_id."""
    request_id = optional_uuid(request.request_id, "request_id")
    if request_id is None:
        return None
    return Idempotency(
        method=request.DESCRIPTOR.full_name,
        request_id=request_id,
        request_hash=fingerprint(request.SerializeToString(deterministic=True)),
        encode=lambda response: response.SerializeToString(deterministic=True),
        decode=response_type.FromString,
    )
