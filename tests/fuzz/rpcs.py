"""Every RPC of the makima.v1 package, found in the generated descriptors and called generically.

Nothing here names a service or a method: a module `makima.v1.*_pb2` that gains a service or a
method is fuzzed without an edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from grpc import aio

import makima.v1

# A unary call that has not answered by then is taken for a server that hangs.
UNARY_DEADLINE = 20.0
# Long-polls and server streams may legitimately hold the call: they get a short deadline, which
# they are allowed to reach.
HOLDING_DEADLINE = 1.0


def message_class(desc: descriptor.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


class Rpc:
    """One method of a makima.v1 service (a plain class: hypothesis prints it by its repr)."""

    def __init__(self, method: descriptor.MethodDescriptor) -> None:
        self.method = method

    def __repr__(self) -> str:
        return f"Rpc({self.name})"

    @property
    def name(self) -> str:
        return f"{self.method.containing_service.name}.{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request_type(self) -> type[Message]:
        return message_class(self.method.input_type)

    @property
    def response_type(self) -> type[Message]:
        return message_class(self.method.output_type)

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def long_poll(self) -> bool:
        """A unary call whose request carries a Duration may wait that long for something to happen."""
        return any(
            f.message_type is not None and f.message_type.full_name == "google.protobuf.Duration"
            for f in self.method.input_type.fields
        )

    @property
    def holds_the_call(self) -> bool:
        """Whether reaching the deadline is a normal end of this call rather than a hang."""
        return self.server_streaming or self.long_poll

    @property
    def deadline(self) -> float:
        return HOLDING_DEADLINE if self.holds_the_call else UNARY_DEADLINE


def all_rpcs() -> list[Rpc]:
    """Every method of every service declared in a makima.v1 `*_pb2` module, in a stable order."""
    found: dict[str, Rpc] = {}
    for info in pkgutil.iter_modules(makima.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"makima.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rpc = Rpc(method)
                found[rpc.path] = rpc
    return [found[path] for path in sorted(found)]


@dataclass
class Answer:
    """What one call got back: its status and every message the server sent."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...]
    responses: list[Message]
    # A server stream we stopped reading (and cancelled) after the items we wanted.
    ended_by_client: bool = False

    @property
    def failed(self) -> bool:
        return self.code != grpc.StatusCode.OK and not self.ended_by_client


def _failure(err: aio.AioRpcError, responses: list[Message]) -> Answer:
    return Answer(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()), responses)


async def invoke(
    channel: aio.Channel,
    rpc: Rpc,
    requests: Sequence[Message],
    metadata: tuple[tuple[str, str], ...],
    *,
    reads: int = 5,
) -> Answer:
    """Call `rpc` with `requests` (exactly one unless it is client-streaming), reading at most `reads` items
    of a server stream before cancelling it."""
    kind = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[(rpc.client_streaming, rpc.server_streaming)]
    callable_: Any = kind(
        rpc.path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=rpc.response_type.FromString,
    )
    argument: Any = iter(list(requests)) if rpc.client_streaming else requests[0]
    if not rpc.server_streaming:
        try:
            response = await callable_(argument, metadata=metadata, timeout=rpc.deadline)
        except aio.AioRpcError as err:
            return _failure(err, [])
        return Answer(grpc.StatusCode.OK, "", (), [response])
    call = callable_(argument, metadata=metadata, timeout=rpc.deadline)
    responses: list[Message] = []
    try:
        for _ in range(reads):
            item = await call.read()
            if item is aio.EOF:
                return Answer(
                    await call.code(), await call.details() or "", tuple(await call.trailing_metadata()), responses
                )
            responses.append(item)
    except aio.AioRpcError as err:
        return _failure(err, responses)
    call.cancel()
    return Answer(grpc.StatusCode.OK, "", (), responses, ended_by_client=True)
