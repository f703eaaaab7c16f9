"""Bad input gets a one-line error and exit status 2, never a traceback; the leader keeps serving."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from helpers import Proc, Stubs, run_cli

from paradecom.v1 import project_pb2, project_service_pb2, task_pb2, task_service_pb2

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]
LEADER = [sys.executable, "-m", "paradecom.leader.main"]
RUNNER = [sys.executable, "-m", "paradecom.runner.main"]


def assert_one_line_error(result: object, *needles: str) -> None:
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.returncode == 2, (result.returncode, stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    for needle in needles:
        assert needle in stderr, stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "x.yaml", "--runners", "-1"], "--runners"),
        (["run", "x.yaml", "--runners", "65"], "from 0 to 64"),
        (["run", "x.yaml", "--runners", "two"], "not a whole number"),
        (["run", "x.yaml", "--runners", "1.5"], "not a whole number"),
        (["run", "x.yaml", "--runners", ""], "--runners"),
        (["run", "x.yaml", "--concurrency", "0"], "--concurrency"),
        (["run", "x.yaml", "--format", "xml"], "--format"),
        (["submit", "--leader", "nohostport", "x.yaml"], "HOST:PORT"),
        (["submit", "--leader", "h:99999", "x.yaml"], "port"),
        (["result", "--leader", "h:1"], "project_id"),
        (["frobnicate"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
def test_client_flags(args: list[str], needle: str) -> None:
    """Every `paradecom` flag out of range or of the wrong type is a one-line error, exit 2."""
    assert_one_line_error(run_cli([*PARADECOM, *args]), needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lease-timeout", "0"], "--lease-timeout"),
        (["--lease-timeout", "nan"], "--lease-timeout"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--max-depth", "11"], "--max-depth"),
        (["--listen", "localhost"], "HOST:PORT"),
        (["--log-format", "xml"], "--log-format"),
    ],
)
def test_leader_flags(args: list[str], needle: str) -> None:
    """Every `paradecom-leader` flag out of range is a one-line error, exit 2."""
    assert_one_line_error(run_cli([*LEADER, *args]), needle)


def test_leader_store_that_cannot_open(tmp_path: Path) -> None:
    """A db path that is not an SQLite file: one line naming it, exit 2."""
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    assert_one_line_error(run_cli([*LEADER, "--listen", "127.0.0.1:0", "--db", str(bad)]), str(bad))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary", "binary"),
        (b"name: [unclosed", "line"),
        (b"- just\n- a list\n", "mapping"),
        (b"name: X\n", "description"),
        (b"name: X\ndescription: Y\nmax_depth: 0\n", "max_depth"),
        (b"name: X\ndescription: Y\ngoals: 3\n", "goals"),
        (b"name: X\ndescription: Y\ncolour: blue\n", "colour"),
    ],
)
def test_bad_project_files(tmp_path: Path, content: bytes, needle: str) -> None:
    """`paradecom submit` and `run` name the file, the field and the problem in one line, exit 2."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    for args in (["submit", "--leader", "127.0.0.1:1", str(path)], ["run", str(path), "--runners", "1"]):
        assert_one_line_error(run_cli([*PARADECOM, *args]), "bad.yaml", needle)


def test_missing_project_file() -> None:
    """A file that is not there: one line, exit 2."""
    assert_one_line_error(run_cli([*PARADECOM, "run", "/nonexistent/p.yaml"]), "/nonexistent/p.yaml")


def test_unreachable_leader(tmp_path: Path) -> None:
    """A leader that is not there: one line saying so, exit 2."""
    path = tmp_path / "p.yaml"
    path.write_text("name: X\ndescription: Y\n")
    assert_one_line_error(run_cli([*PARADECOM, "submit", "--leader", "127.0.0.1:1", str(path)]), "cannot reach")


def test_bad_rpc_fields_are_invalid_argument(start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs) -> None:
    """Empty or unknown ids, bad counts and bad projects get INVALID_ARGUMENT / NOT_FOUND, and the
    leader keeps serving."""
    _, address = start_leader()
    tasks, projects = stubs(address)
    cases: list[tuple[Callable[[], object], grpc.StatusCode]] = [
        (lambda: projects.SubmitProject(project_service_pb2.SubmitProjectRequest(), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: projects.SubmitProject(project_service_pb2.SubmitProjectRequest(
            project=project_pb2.ProjectDefinition(name="", description="d")), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: projects.SubmitProject(project_service_pb2.SubmitProjectRequest(
            project=project_pb2.ProjectDefinition(name="n", description="d", max_depth=-1)), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: projects.GetProject(project_service_pb2.GetProjectRequest(project_id=""), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: projects.GetProject(project_service_pb2.GetProjectRequest(project_id="nope"), timeout=5),
         grpc.StatusCode.NOT_FOUND),
        (lambda: projects.ListProjects(project_service_pb2.ListProjectsRequest(page_size=-5), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: projects.ListProjects(project_service_pb2.ListProjectsRequest(page_token="x"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: list(tasks.PullTask(task_service_pb2.PullTaskRequest(runner_id="r", max_in_flight=-1), timeout=5)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: list(tasks.PullTask(task_service_pb2.PullTaskRequest(runner_id="", max_in_flight=1), timeout=5)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: tasks.SubmitResult(task_service_pb2.SubmitResultRequest(task_id="1", lease_token="t"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: tasks.SubmitResult(task_service_pb2.SubmitResultRequest(
            task_id="12345", lease_token="t", subtasks=[task_pb2.Subtask(key="1", title="Do")]), timeout=5),
         grpc.StatusCode.NOT_FOUND),
        (lambda: tasks.ExtendLease(task_service_pb2.ExtendLeaseRequest(task_id="x" * 10_000, lease_token="t"),
                                   timeout=5), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: tasks.FailTask(task_service_pb2.FailTaskRequest(task_id="1", lease_token=""), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code, err.value.details()
        assert err.value.details()
    ok = projects.ListProjects(project_service_pb2.ListProjectsRequest(), timeout=5)
    assert list(ok.projects) == []
