"""Regenerate the Python stubs under clients/python/makima/v1 from protos/makima/v1.

One script so that CI can regenerate and fail when the committed stubs are stale
(`python scripts/gen_protos.py --check`).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "clients" / "python"
PACKAGE_DIR = Path("makima") / "v1"
# Every makima.v1 file and its imports, with source info (the protos' comments): what reflection serves.
DESCRIPTOR_SET = "descriptors.binpb"
INIT_TEXT = '"""Generated protobuf and gRPC stubs of the makima.v1 API (see scripts/gen_protos.py)."""\n'


def generate(out_root: Path) -> None:
    """Run protoc (from grpcio-tools) with the message, gRPC and mypy-protobuf typing plugins, and write
    the descriptor set with source info that server reflection serves (generated `_pb2` descriptors
    carry no comments)."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        f"--descriptor_set_out={out_root / PACKAGE_DIR / DESCRIPTOR_SET}",
        "--include_imports",
        "--include_source_info",
        *protos,
    ]
    # The mypy-protobuf plugins live beside the interpreter; protoc finds plugins on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)


def generated_files(root: Path) -> set[str]:
    return {p.name for p in (root / PACKAGE_DIR).iterdir() if p.is_file() and p.name != "py.typed"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        (fresh / PACKAGE_DIR).mkdir(parents=True)
        generate(fresh)
        target = OUT_ROOT / PACKAGE_DIR
        names = generated_files(fresh)
        if ns.check:
            stale = sorted(
                n
                for n in names | generated_files(OUT_ROOT)
                if not (target / n).exists()
                or not (fresh / PACKAGE_DIR / n).exists()
                or not filecmp.cmp(target / n, fresh / PACKAGE_DIR / n, shallow=False)
            )
            if stale:
                print("stale generated stubs (run scripts/gen_protos.py):", *stale, file=sys.stderr)
                return 1
            print("generated stubs are up to date")
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for old in generated_files(OUT_ROOT) - names:
            (target / old).unlink()
        for name in names:
            shutil.copyfile(fresh / PACKAGE_DIR / name, target / name)
        (target / "py.typed").touch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
