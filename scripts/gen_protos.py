"""Generate the Python stubs in paradecom/v1/ from proto/paradecom/v1/*.proto.

The stubs are committed (so installing needs no protoc) and
`tests/test_contract.py::test_committed_stubs_are_fresh` fails when they differ from what this script
makes. Run it with `make proto` after editing a .proto file (which also regenerates docs/proto.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = ROOT / "paradecom" / "v1"


def generate(out_dir: Path) -> None:
    """Write the stubs for every proto under proto/paradecom/v1 into out_dir/paradecom/v1."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "paradecom" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    # The mypy plugins are console scripts beside this interpreter; naming them keeps the command
    # working when the venv is not on PATH.
    bindir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / "paradecom" / "v1" / "__init__.py").write_text(
        '"""Generated protobuf and gRPC stubs for paradecom.v1 (made by scripts/gen_protos.py)."""\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "paradecom" / "v1"
        if args.check:
            stale = [
                p.name
                for p in sorted(fresh.iterdir())
                if not (PACKAGE_DIR / p.name).exists() or (PACKAGE_DIR / p.name).read_bytes() != p.read_bytes()
            ]
            extra = [p.name for p in PACKAGE_DIR.glob("*.py*") if not (fresh / p.name).exists()]
            if stale or extra:
                print(
                    f"stale stubs in paradecom/v1: {', '.join(stale + extra)}; run `make proto`",
                    file=sys.stderr,
                )
                raise SystemExit(1)
            return
        if PACKAGE_DIR.exists():
            shutil.rmtree(PACKAGE_DIR)
        shutil.copytree(fresh, PACKAGE_DIR)


if __name__ == "__main__":
    main()
