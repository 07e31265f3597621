"""What every servicer shares: the runtime, and one call per kind of use case.

A servicer method validates its request into the use case's input, makes one call, and maps the
result to its response: `mutate` for a use case that is one write transaction (the response is
built inside it, so that a request_id stores exactly the answer sent), `call` for any other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, Self, TypeVar

from google.protobuf.descriptor import Descriptor

from makima.server.api.interceptor import current_principal
from makima.server.api.validate import optional_uuid
from makima.server.domain.runtime import Caller, Idempotency, Runtime, Tx, fingerprint


class _Response(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...

    @classmethod
    def FromString(cls, s: bytes) -> Self: ...


class _Idempotent(Protocol):
    """A request that carries a request_id (AIP-155)."""

    @property
    def DESCRIPTOR(self) -> Descriptor: ...

    @property
    def request_id(self) -> str: ...

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...


R = TypeVar("R", bound=_Response)
In = TypeVar("In")
Out = TypeVar("Out")


class Servicer:
    """Base of the makima.v1 servicers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def mutate(
        self,
        request: _Idempotent | None,
        response_type: type[R],
        use_case: Callable[[Tx, In], Awaitable[Out]],
        inp: In,
        answer: Callable[[Out], R],
    ) -> R:
        """Run a mutating use case and answer from its result, in one transaction; with a request_id,
        a retry replays the first answer. `request` is None for a call without a request_id."""

        async def body(tx: Tx) -> R:
            return answer(await use_case(tx, inp))

        idem = None if request is None else idempotency(request, response_type)
        return await self.rt.mutate(current_principal(), body, idem)

    async def replay(self, request: _Idempotent, response_type: type[R]) -> R | None:
        """The answer of an earlier call with the request's request_id, if there was one: for a call
        that must not start its work again when it is a retry (see Runtime.replay)."""
        idem = idempotency(request, response_type)
        if idem is None:
            return None
        return await self.rt.replay(current_principal(), idem)

    async def call(self, use_case: Callable[[Caller, In], Awaitable[Out]], inp: In) -> Out:
        """Run a use case that is not one write transaction (a read, a long poll) for the RPC's caller."""
        return await use_case(self.caller(), inp)

    def caller(self) -> Caller:
        """The runtime as the RPC's caller uses it."""
        return Caller(self.rt, current_principal())


def idempotency(request: _Idempotent, response_type: type[R]) -> Idempotency[R] | None:
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
