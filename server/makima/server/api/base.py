"""What every servicer shares: the runtime and the idempotent mutation helper."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Self, TypeVar

from makima.server.api.interceptor import current_principal
from makima.server.api.validate import optional_uuid
from makima.server.domain.runtime import Idempotency, Runtime, Tx, fingerprint


class _Response(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...

    @classmethod
    def FromString(cls, s: bytes) -> Self: ...


R = TypeVar("R", bound=_Response)


class Servicer:
    """Base of the makima.v1 servicers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def mutate(self, request: Any, response_type: type[R], body: Callable[[Tx], Awaitable[R]]) -> R:
        """Run a mutating use case; with a request_id, a retry replays the first answer."""
        return await self.rt.mutate(current_principal(), body, idempotency(request, response_type))


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
