"""Test helpers: real processes on loopback, and waiting on conditions instead of sleeping."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from paradecom.devtools.testing import Proc, wait_for, wait_for_async
from paradecom.v1 import project_service_pb2_grpc, task_service_pb2_grpc

__all__ = ["BIN", "Proc", "Stubs", "free_port", "run_cli", "wait_for", "wait_for_async"]

BIN = Path(sys.executable).parent

# What the `stubs` fixture (conftest.py) gives: blocking stubs to the leader at an address.
Stubs = Callable[[str], tuple[task_service_pb2_grpc.TaskServiceStub, project_service_pb2_grpc.ProjectServiceStub]]


def run_cli(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output."""
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input_text,
    )


def free_port() -> int:
    """A loopback port free now, for a process that must be told its port before it starts (or
    that is restarted on the same one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
