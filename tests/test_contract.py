"""The contract: committed stubs match proto/, the leader serves health and reflection, and it
decides the LLM request every runner makes (LlmRequest)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import Proc, run_cli

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


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


@pytest.mark.slow
def test_runners_ask_what_the_leader_says_not_their_own_settings(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """The fan-out, re-asks and answer profile are the leader's (--max-subtasks, --answer-profile):
    a runner started with other bounds sends the leader's LlmRequest as it is, so the schema at the
    endpoint is the leader's and fake-llm, reading it, answers just the small profile's fields."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5")
    _, leader = start_leader("--max-subtasks", "3", "--answer-profile", "small")
    start_runner(leader, base_url, "--max-subtasks", "9", "--min-subtasks", "5", "--no-cache")
    path = tmp_path / "p.yaml"
    path.write_text("name: Blog\ndescription: Posts and comments.\nmax_depth: 2\n")
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"])
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert tree["project"]["state"] == "done" and tree["project"]["counts"]["total"] == 1 + 3 + 9
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/requests", timeout=10) as response:
        bodies = json.loads(response.read())
    assert len(bodies) == 4
    for body in bodies:
        subtasks = body["response_format"]["json_schema"]["schema"]["properties"]["subtasks"]
        assert (subtasks["minItems"], subtasks["maxItems"]) == (3, 3)
        assert "Write 3 subtasks for this task" in body["messages"][-1]["content"]
    (root,) = tree["tasks"]
    assert [c["description"] for c in root["children"]] == ["", "", ""], "the small profile asks for no descriptions"


@pytest.mark.slow
def test_leader_request_flags_are_checked(tmp_path: Path) -> None:
    """Bad request settings on the leader are one line and exit code 2, whether flags or environment."""
    leader = [sys.executable, "-m", "paradecom.leader.main", "--db", str(tmp_path / "x.db")]
    for flags, env, needle in (
        (["--answer-profile", "tiny"], {}, "--answer-profile"),
        ([], {"PARADECOM_ANSWER_PROFILE": "tiny"}, "--answer-profile"),
        (["--max-subtasks", "21"], {}, "--max-subtasks"),
        ([], {"PARADECOM_MAX_REASKS": "11"}, "--max-reasks"),
        (["--min-subtasks", "5", "--max-subtasks", "3"], {}, "--min-subtasks 5 is more than --max-subtasks 3"),
    ):
        done = run_cli([*leader, *flags], env=env, timeout=30)
        assert done.returncode == 2, (flags, env, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr, done.stderr
