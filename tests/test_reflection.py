"""Reflection under v1 and v1alpha, serving the protos' comments (what `grpcurl describe` shows)."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2

from makima.server.app import SERVICE_NAMES, App
from tests.test_server import GRPCURL, run

EXPECTED = {
    *SERVICE_NAMES,
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


async def ask(channel: aio.Channel, version: str, request: reflection_pb2.ServerReflectionRequest) -> object:
    """One reflection request under `grpc.reflection.<version>` (v1 messages are wire-identical to v1alpha's)."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = [r async for r in call(iter([request]))]
    return response


async def test_v1_and_v1alpha_list_the_same_services(channel: aio.Channel) -> None:
    for version in ("v1", "v1alpha"):
        response = await ask(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert {s.name for s in response.list_services_response.service} == EXPECTED, version


async def test_descriptors_carry_the_comments(channel: aio.Channel) -> None:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="makima.v1.HistoryService")
    for version in ("v1", "v1alpha"):
        response = await ask(channel, version, request)
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in response.file_descriptor_response.file_descriptor_proto
        ]
        history = next(f for f in files if f.name == "makima/v1/history.proto")
        comments = " ".join(loc.leading_comments for loc in history.source_code_info.location)
        assert "Replays every matching timeline event" in comments, version
        assert {"makima/v1/resources.proto", "google/protobuf/timestamp.proto"} <= {f.name for f in files}
    missing = await ask(channel, "v1", reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such"))
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_grpcurl_describe_shows_the_documentation(server: App) -> None:
    address = f"127.0.0.1:{server.port}"
    code, out, err = await run(GRPCURL, "-plaintext", address, "describe", "makima.v1.HistoryService")
    assert code == 0, err
    assert "Replays every matching timeline event" in out
    code, out, err = await run(GRPCURL, "-plaintext", address, "describe", "makima.v1.ReplayEnded")
    assert code == 0, err
    assert "starts live delivery" in out
    code, out, err = await run(GRPCURL, "-plaintext", address, "describe", "grpc.reflection.v1.ServerReflection")
    assert code == 0, err
    assert "ServerReflectionInfo" in out
