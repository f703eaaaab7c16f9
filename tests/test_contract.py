"""The contract: committed stubs match proto/, and the leader serves health and reflection."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import grpc
from conftest import ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import Proc


def test_committed_stubs_are_fresh() -> None:
    """`scripts/gen_protos.py --check` fails when paradecom/v1 differs from what proto/ generates."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_leader_serves_health_and_reflection(start_leader: Callable[..., tuple[Proc, str]]) -> None:
    """grpc.health.v1 says SERVING for the server and each service; reflection lists ParaDecom's services."""
    _, address = start_leader()
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "paradecom.v1.TaskService", "paradecom.v1.ProjectService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"paradecom.v1.TaskService", "paradecom.v1.ProjectService", "grpc.health.v1.Health"} <= names
