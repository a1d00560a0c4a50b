#!/usr/bin/env python3
"""Generate the gRPC stubs under src/baton_tx/_proto/ from the repository's proto/ files.

    python scripts/gen_proto.py          # regenerate in place
    python scripts/gen_proto.py --check  # regenerate into a temp dir and diff; exit 1 on drift

grpc_tools.protoc writes absolute imports (``from baton.v1 import coordinator_pb2``), which only
work if a top-level ``baton`` package exists. The stubs live inside ``baton_tx._proto`` instead, so
those imports are rewritten to relative ones. Both modes run the same code, so the check compares
exactly what a regeneration would write.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDK = HERE.parent
REPO = SDK.parent.parent
PROTO_ROOT = REPO / "proto"
PROTOS = ["baton/v1/coordinator.proto", "baton/v1/participant.proto"]
OUT = SDK / "src" / "baton_tx" / "_proto"
# The generated files name the protoc version, so only this grpcio-tools reproduces them.
GRPCIO_TOOLS = "1.68.1"

INIT = '"""Generated protobuf and gRPC stubs for baton.v1 (see scripts/gen_proto.py)."""\n'
ABSOLUTE_IMPORT = re.compile(r"^from baton\.v1 import (\w+)", re.MULTILINE)


def generate(into: Path) -> None:
    try:
        from importlib.metadata import version

        found = version("grpcio-tools")
    except Exception:  # noqa: BLE001 - any lookup failure means it is not installed
        sys.exit("gen_proto: grpcio-tools is not installed (pip install -r requirements-dev.txt)")
    if found != GRPCIO_TOOLS:
        sys.exit(f"gen_proto: grpcio-tools {GRPCIO_TOOLS} is required, found {found}")
    with tempfile.TemporaryDirectory() as raw:
        raw_dir = Path(raw)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={raw_dir}",
                f"--pyi_out={raw_dir}",
                f"--grpc_python_out={raw_dir}",
                *PROTOS,
            ],
            check=True,
        )
        into.mkdir(parents=True, exist_ok=True)
        for path in sorted((raw_dir / "baton" / "v1").iterdir()):
            text = ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text())
            (into / path.name).write_text(text)
    (into / "__init__.py").write_text(INIT)


def files(directory: Path) -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in (".py", ".pyi")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    if not args.check:
        if OUT.exists():
            shutil.rmtree(OUT)
        generate(OUT)
        print(f"gen_proto: wrote {OUT.relative_to(REPO)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp) / "_proto"
        generate(fresh_dir)
        fresh, current = files(fresh_dir), files(OUT) if OUT.exists() else {}
    stale = False
    for name in sorted(set(fresh) | set(current)):
        if fresh.get(name) != current.get(name):
            stale = True
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.get(name, "").splitlines(keepends=True),
                    fresh.get(name, "").splitlines(keepends=True),
                    f"checked-in/{name}",
                    f"generated/{name}",
                )
            )
    if stale:
        print("gen_proto: the stubs do not match proto/; run scripts/gen_proto.py", file=sys.stderr)
        return 1
    print("gen_proto: stubs match proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
