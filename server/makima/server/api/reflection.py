"""Server reflection under `grpc.reflection.v1` and `grpc.reflection.v1alpha`, with the protos' comments.

grpcio-reflection serves only v1alpha, and from descriptors that lost their source info (its
`CopyToProto` drops it), so `grpcurl describe` would show no documentation. This servicer answers
the same requests from the descriptor set that `scripts/gen_protos.py` writes with source info,
under both service names: v1 has the same messages as v1alpha (wire-identical), so one servicer
serves both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA = reflection.SERVICE_NAME
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse


class _FileDescriptor(Protocol):
    """A file descriptor of either protobuf implementation: the stubs type some modules' `DESCRIPTOR`
    as the pure-Python class and others as upb's."""

    @property
    def name(self) -> str: ...
    @property
    def dependencies(self) -> Sequence[_FileDescriptor]: ...
    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto, /) -> None: ...


def _proto_of(descriptor: _FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file under the v1 package (the messages are identical)."""
    proto = _proto_of(reflection_pb2.DESCRIPTOR)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # assigning "" would mark a scalar field as typed
                field.type_name = field.type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace("v1alpha", "v1")
        method.output_type = method.output_type.replace("v1alpha", "v1")
    return proto


def _with_imports(descriptor: _FileDescriptor, files: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
    """Add `descriptor`'s file to `files` after its imports, keeping any file already there."""
    for dependency in descriptor.dependencies:
        _with_imports(dependency, files)
    if descriptor.name not in files:
        files[descriptor.name] = _proto_of(descriptor)


def _drop_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """Clear the `json_name`s protoc writes into a descriptor set, as the generated descriptors have none.

    With them, grpcurl prints lowerCamelCase field names; without, the proto names it always printed.
    """
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


def _documented_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The makima.v1 files and their imports with source info; then health, both reflection files and
    the google.rpc error details that statuses carry (so grpcurl can print them)."""
    data = resources.files("makima.v1").joinpath("descriptors.binpb").read_bytes()
    files = {file.name: file for file in descriptor_pb2.FileDescriptorSet.FromString(data).file}
    for file in files.values():
        _drop_json_names(file.message_type)
    for extra in (
        health_pb2.DESCRIPTOR,
        reflection_pb2.DESCRIPTOR,
        error_details_pb2.DESCRIPTOR,
        status_pb2.DESCRIPTOR,
    ):
        _with_imports(extra, files)
    files[_V1_FILE] = _v1_file()
    return list(files.values())


class DocumentedReflection(reflection.aio.ReflectionServicer):
    """grpcio-reflection's servicer, answering with each file as written (comments included)."""

    def __init__(self, service_names: Iterable[str]) -> None:
        files = _documented_files()
        pool = descriptor_pool.DescriptorPool()
        for file in files:
            pool.Add(file)
        super().__init__((*service_names, V1ALPHA, V1), pool=pool)
        self._files = {file.name: file.SerializeToString() for file in files}

    def _documented(self, response: Response) -> Response:
        if response.HasField("file_descriptor_response"):
            protos = response.file_descriptor_response.file_descriptor_proto
            names = [descriptor_pb2.FileDescriptorProto.FromString(proto).name for proto in protos]
            protos[:] = [self._files[name] for name in names]
        return response

    # The three lookups extend private methods of grpcio-reflection, which its stubs leave out (hence the ignores).
    def _file_by_filename(self, request: Request, filename: str) -> Response:
        return self._documented(super()._file_by_filename(request, filename))  # type: ignore[misc]

    def _file_containing_symbol(self, request: Request, fully_qualified_name: str) -> Response:
        return self._documented(super()._file_containing_symbol(request, fully_qualified_name))  # type: ignore[misc]

    def _file_containing_extension(self, request: Request, containing_type: str, extension_number: int) -> Response:
        return self._documented(
            super()._file_containing_extension(request, containing_type, extension_number)  # type: ignore[misc]
        )


def add_reflection(service_names: Iterable[str], server: aio.Server) -> None:
    """Serve reflection of `service_names` (plus health and reflection itself) under v1 and v1alpha."""
    servicer = DocumentedReflection(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}) for name in (V1ALPHA, V1)]
    )
