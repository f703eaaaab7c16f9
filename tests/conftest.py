"""Fixtures that start real processes on loopback: fake-llm, leaders, runners."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from helpers import Proc, Stubs

from paradecom.v1 import project_service_pb2_grpc, task_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEVAI = ROOT / "data" / "devai"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts through this list is stopped at its end, whatever happened."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def fake_llm(procs: list[Proc]) -> Callable[..., str]:
    """Start fake-llm with extra flags; returns its OpenAI base URL."""

    def start(*flags: str) -> str:
        p = Proc([sys.executable, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", *flags])
        procs.append(p)
        return f"http://{p.address()}/v1"

    return start


@pytest.fixture
def start_leader(procs: list[Proc], tmp_path: Path) -> Callable[..., tuple[Proc, str]]:
    """Start a leader on a free port (db in tmp_path unless given); returns (process, address)."""

    def start(*flags: str, db: Path | None = None, listen: str = "127.0.0.1:0") -> tuple[Proc, str]:
        args = [sys.executable, "-m", "paradecom.leader.main", "--listen", listen,
                "--db", str(db or tmp_path / "leader.db"), "--log-format", "json", *flags]  # fmt: skip
        p = Proc(args)
        procs.append(p)
        return p, p.address()

    return start


@pytest.fixture
def start_runner(procs: list[Proc]) -> Callable[..., Proc]:
    """Start a runner against a leader and an OpenAI base URL."""

    def start(leader: str, base_url: str, *flags: str) -> Proc:
        p = Proc(
            [
                sys.executable,
                "-m",
                "paradecom.runner.main",
                "--leader",
                leader,
                "--log-format",
                "json",
                *flags,
            ],
            env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"},
        )
        procs.append(p)
        return p

    return start


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    """Blocking gRPC stubs to a leader, for tests that play runner or client by hand."""
    channels: list[grpc.Channel] = []

    def make(
        address: str,
    ) -> tuple[task_service_pb2_grpc.TaskServiceStub, project_service_pb2_grpc.ProjectServiceStub]:
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return task_service_pb2_grpc.TaskServiceStub(channel), project_service_pb2_grpc.ProjectServiceStub(channel)

    yield make
    for c in channels:
        c.close()


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own decomposition cache (inherited by the processes it starts), so no
    test is answered from another's cache."""
    directory = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("PARADECOM_CACHE_DIR", str(directory))
    return directory
