"""Clients that are not ours: grpcurl, buf curl, another language's generated code, and wire compatibility."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from makima.server.app import App
from makima.v1 import supervisor_pb2
from tests.helpers import Api, create_contract
from tests.test_server import GRPCURL, run

BUF = Path(__file__).resolve().parent.parent / ".tools" / "node_modules" / ".bin" / "buf"


def _missing(what: str) -> NoReturn:
    """Fail under CI; skip on a machine without Node.js/npm (`make test` installs buf when it can)."""
    message = f"{what} is not installed: install Node.js with npm and run `make test`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def buf() -> str:
    if not BUF.exists():
        _missing("buf")
    return str(BUF)


def node() -> str:
    path = shutil.which("node")
    if path is None:
        _missing("node")
    return path


async def test_grpcurl_describes_and_streams_the_timeline(server: App, api: Api) -> None:
    address = f"127.0.0.1:{server.port}"
    code, out, err = await run(GRPCURL, "-plaintext", address, "describe", "makima.v1.HistoryService")
    assert code == 0, err
    assert (
        "rpc StreamTimeline ( .makima.v1.StreamTimelineRequest ) returns ( stream .makima.v1.StreamTimelineResponse )"
        in out
    )

    first = await create_contract(api, "one")
    second = await create_contract(api, "two")
    code, out, err = await run(
        GRPCURL,
        "-plaintext",
        "-max-time",
        "3",
        "-H",
        f"x-api-key: {api.key}",
        "-d",
        "{}",
        address,
        "makima.v1.HistoryService/StreamTimeline",
    )
    assert code == 64 + 4, (code, err)  # the stream never ends by itself: grpcurl stops it at -max-time
    items = [json.loads(chunk) for chunk in out.replace("}\n{", "}\0{").split("\0") if chunk.strip()]
    events = [item["event"] for item in items if "event" in item]
    assert [(e["cursor"], e["contract_id"]) for e in events] == [("1", first.id), ("2", second.id)]
    assert items[2]["replay_ended"]["cursor"] == "2"


async def test_buf_curl_calls_through_reflection(server: App, api: Api) -> None:
    code, out, err = await run(
        buf(),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        "grpc-v1alpha",
        "-H",
        f"authorization: Bearer {api.key}",
        "-d",
        json.dumps({"name": "from buf curl"}),
        f"http://127.0.0.1:{server.port}/makima.v1.SupervisorService/CreateContract",
    )
    assert code == 0, err
    assert json.loads(out)["contract"]["name"] == "from buf curl"


async def test_javascript_client_code_speaks_the_same_wire_format(repo_root: Path) -> None:
    """protoc-gen-es generates JavaScript from the protos; node encodes a request that Python decodes."""
    tools = repo_root / ".tools"
    out = tools / "gen-es"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "package.json").write_text('{"type": "module"}')
    template = out / "buf.gen.yaml"
    template.write_text(
        "version: v2\nplugins:\n"
        f"  - local: {tools / 'node_modules/.bin/protoc-gen-es'}\n"
        f"    out: {out}\n"
        "    opt: [target=js, import_extension=js]\n"
    )
    code, _, err = await run(buf(), "generate", str(repo_root / "protos"), "--template", str(template))
    assert code == 0, err
    script = out / "encode.js"
    script.write_text(
        'import { create, toBinary } from "@bufbuild/protobuf";\n'
        'import { CreateContractRequestSchema } from "./makima/v1/supervisor_pb.js";\n'
        'const request = create(CreateContractRequestSchema, { name: "from javascript", initialPhase: "plan" });\n'
        'process.stdout.write(Buffer.from(toBinary(CreateContractRequestSchema, request)).toString("hex"));\n'
    )
    code, encoded, err = await run(node(), str(script))
    assert code == 0, err
    decoded = supervisor_pb2.CreateContractRequest.FromString(bytes.fromhex(encoded))
    assert (decoded.name, decoded.initial_phase) == ("from javascript", "plan")


async def test_api_stays_wire_compatible_with_the_released_one(repo_root: Path, tmp_path: Path) -> None:
    """`buf breaking` against api/makima-v1.binpb, the contract as released; and it can fail."""
    released = str(repo_root / "api" / "makima-v1.binpb")
    code, out, err = await run(buf(), "breaking", str(repo_root / "protos"), "--against", released)
    assert code == 0, out + err

    changed = tmp_path / "protos"
    shutil.copytree(repo_root / "protos", changed)
    resources = changed / "makima/v1/resources.proto"
    resources.write_text(resources.read_text().replace("string name = 2;", "string name = 22;", 1))
    code, out, err = await run(buf(), "breaking", str(changed), "--against", released)
    assert code != 0
    assert "name" in out + err
