"""Generates the Python modules for every .proto under protos/ (run by `make proto`).

Usage: python protos/generate.py OUTPUT_DIR

Imports follow the proto package (instantorders.v2 -> instantorders/v2/), so
the output folder is a source root. The google/api and google/rpc protos come
from the googleapis-common-protos package, which ships their sources and their
generated modules; they are included, not regenerated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from google.api import annotations_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
WELL_KNOWN_PROTOS = Path(grpc_tools.__file__).parent / "_proto"
GOOGLEAPIS_PROTOS = Path(annotations_pb2.__file__).parents[2]


def generate(output: Path) -> None:
    sources = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    output.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{GOOGLEAPIS_PROTOS}",
            f"-I{WELL_KNOWN_PROTOS}",
            f"--python_out={output}",
            f"--pyi_out={output}",
            f"--grpc_python_out={output}",
            *sources,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    for package in {Path(source).parent for source in sources}:
        for folder in (package, *package.parents[:-1]):
            (output / folder / "__init__.py").touch()


if __name__ == "__main__":
    generate(Path(sys.argv[1]))
