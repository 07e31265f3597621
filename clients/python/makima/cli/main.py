"""`makima`: a command line over the makima.v1 gRPC API.

Connection settings come from --address / --api-key or MAKIMA_ADDRESS / MAKIMA_API_KEY. Output is
a readable listing by default and JSON (the proto's JSON mapping) with --json. Errors print one line
`error: CODE REASON: message` and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from makima.v1 import supervisor_pb2, supervisor_pb2_grpc, task_fork_pb2, task_fork_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _channel(args: argparse.Namespace) -> grpc.Channel:
    return grpc.insecure_channel(args.address)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {args.api_key}")] if args.api_key else []


def _print(args: argparse.Namespace, message: Message) -> None:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    for section, value in data.items():
        if isinstance(value, dict):
            print(f"{section}:")
            for key, item in value.items():
                print(f"  {key:<26} {item}")
        else:
            print(f"{section:<28} {value}")


def _call(args: argparse.Namespace, stub_type: Callable[[grpc.Channel], Any], method: str, request: Message) -> int:
    with _channel(args) as channel:
        stub = stub_type(channel)
        try:
            response = getattr(stub, method).with_call(request, metadata=_metadata(args), timeout=args.timeout)[0]
        except grpc.RpcError as err:
            return _report(err)
    _print(args, response)
    return 0


def _report(err: grpc.RpcError) -> int:
    code = err.code()  # type: ignore[attr-defined]
    reason = ""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = f" {info.reason}"
    print(f"error: {code.name}{reason}: {err.details()}", file=sys.stderr)  # type: ignore[attr-defined]
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="makima",
        description="Command line for the makima history & resume service.",
        epilog="examples:\n"
        "  export MAKIMA_API_KEY=mk_...\n"
        "  makima contract-create --name 'login page' --phase plan\n"
        "  makima contract-get 0b7e...\n"
        "  makima advance-phase 0b7e... execute\n"
        "  makima task-create --name 'write tests' --contract 0b7e...\n"
        "  makima --json task-get 5d2c...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", default=os.environ.get("MAKIMA_ADDRESS", DEFAULT_ADDRESS))
    parser.add_argument("--api-key", default=os.environ.get("MAKIMA_API_KEY", ""))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a listing")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("contract-create", help="create a contract")
    p.add_argument("--name", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--phase", default="", help="initial phase (default research)")
    p.set_defaults(
        run=lambda a: _call(
            a,
            supervisor_pb2_grpc.SupervisorServiceStub,
            "CreateContract",
            supervisor_pb2.CreateContractRequest(name=a.name, description=a.description, initial_phase=a.phase),
        )
    )

    p = commands.add_parser("contract-get", help="show a contract")
    p.add_argument("contract_id")
    p.set_defaults(
        run=lambda a: _call(
            a,
            supervisor_pb2_grpc.SupervisorServiceStub,
            "GetContract",
            supervisor_pb2.GetContractRequest(contract_id=a.contract_id),
        )
    )

    p = commands.add_parser("advance-phase", help="move a contract to another phase")
    p.add_argument("contract_id")
    p.add_argument("phase")
    p.set_defaults(
        run=lambda a: _call(
            a,
            supervisor_pb2_grpc.SupervisorServiceStub,
            "AdvancePhase",
            supervisor_pb2.AdvancePhaseRequest(contract_id=a.contract_id, phase=a.phase),
        )
    )

    p = commands.add_parser("task-create", help="create a task")
    p.add_argument("--name", required=True)
    p.add_argument("--instructions", default="")
    p.add_argument("--contract", default="", help="contract UUID")
    p.add_argument("--parent", default="", help="parent task UUID")
    p.set_defaults(
        run=lambda a: _call(
            a,
            task_fork_pb2_grpc.TaskForkServiceStub,
            "CreateTask",
            task_fork_pb2.CreateTaskRequest(
                name=a.name, instructions=a.instructions, contract_id=a.contract, parent_task_id=a.parent
            ),
        )
    )

    p = commands.add_parser("task-get", help="show a task")
    p.add_argument("task_id")
    p.set_defaults(
        run=lambda a: _call(
            a,
            task_fork_pb2_grpc.TaskForkServiceStub,
            "GetTask",
            task_fork_pb2.GetTaskRequest(task_id=a.task_id),
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
