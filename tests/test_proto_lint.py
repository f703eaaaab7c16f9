"""Proto hygiene: `buf lint` (proto/buf.yaml's STANDARD rules, and buf's COMMENTS rules: every
service, RPC, message, field and enum value has a comment) passes with the buf pinned in
tools/package.json, every .proto file sets the same per-language package options, and
docs/proto.md is what scripts/gen_proto_docs.py makes from the comments."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
PROTOS = sorted((ROOT / "proto" / "paradecom" / "v1").glob("*.proto"))
# The options every file sets, with the same value in every file (java_outer_classname differs by file).
SHARED_OPTIONS = ("go_package", "java_package", "java_multiple_files", "csharp_namespace")


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail(f"{BUF.relative_to(ROOT)} is missing: run npm ci --prefix tools")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes() -> None:
    """`buf lint proto` from the repository root exits 0 under proto/buf.yaml."""
    result = buf("lint", "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_element_is_commented() -> None:
    """buf's COMMENTS rules pass too: docs/proto.md, made from the comments, leaves nothing out."""
    result = buf("lint", "--config", '{"version": "v2", "lint": {"use": ["COMMENTS"]}}', cwd=ROOT / "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_file_sets_the_per_language_options() -> None:
    """Each .proto file sets go_package, java_package, java_multiple_files, csharp_namespace (one value
    for all files) and a java_outer_classname of its own, so that stubs generated in those languages
    land in one package."""
    assert PROTOS
    values: dict[str, set[str]] = {name: set() for name in SHARED_OPTIONS}
    outer: set[str] = set()
    for path in PROTOS:
        options = dict(re.findall(r"^option (\w+) = (.+);$", path.read_text(), flags=re.MULTILINE))
        for name in SHARED_OPTIONS:
            assert name in options, f"{path.name}: no option {name}"
            values[name].add(options[name])
        assert "java_outer_classname" in options, f"{path.name}: no option java_outer_classname"
        outer.add(options["java_outer_classname"])
    assert all(len(v) == 1 for v in values.values()), values
    assert len(outer) == len(PROTOS), "java_outer_classname must differ between files"


def test_proto_reference_is_up_to_date() -> None:
    """docs/proto.md is exactly what scripts/gen_proto_docs.py makes from the .proto files now."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_proto_reference_covers_every_element() -> None:
    """docs/proto.md has a heading for every service, message and enum, a row for every RPC and
    enum value, and names every field, as declared in the .proto files."""
    text = (ROOT / "docs" / "proto.md").read_text()
    for path in PROTOS:
        source = re.sub(r"//.*", "", path.read_text())
        for kind, name in re.findall(r"^\s*(service|message|enum) (\w+)", source, flags=re.MULTILINE):
            assert re.search(rf"^### (\w+\.)*{name}$", text, flags=re.MULTILINE), f"{kind} {name}"
        for rpc in re.findall(r"^\s*rpc (\w+)", source, flags=re.MULTILINE):
            assert f"| `{rpc}` |" in text, f"rpc {rpc}"
        for name, number in re.findall(
            r"^\s*(?:repeated |optional )?[\w.]+ (\w+) = (\d+);", source, flags=re.MULTILINE
        ):
            assert f"| `{name}` | {number} |" in text, f"{path.name}: {name} = {number}"
