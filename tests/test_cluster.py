"""End to end: real leader, runner and fake-llm processes on loopback, the real openai client."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import DEVAI
from helpers import Proc, Stubs, free_port, run_cli, wait_for

from paradecom.v1 import (
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

DEVAI_PROJECT = DEVAI / "01_Image_Classification_ResNet18_Fashion_MNIST_DL.json"
PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def write_project(tmp_path: Path, **fields: object) -> Path:
    data = {"name": "Test project", "description": "A project to decompose in tests.", **fields}
    path = tmp_path / "project.json"
    path.write_text(json.dumps(data))
    return path


def summary(project_stub: project_service_pb2_grpc.ProjectServiceStub, project_id: str) -> project_pb2.ProjectSummary:
    resp = project_stub.GetProject(project_service_pb2.GetProjectRequest(project_id=project_id), timeout=5)
    return resp.project


def all_tasks(tasks: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for t in tasks:
        out.append(t)
        out.extend(all_tasks(t["children"]))
    return out


def assert_complete_tree(tree: dict, fanout: int, max_depth: int, roots: int = 1) -> list[dict]:  # type: ignore[type-arg]
    """Every task at depth < max_depth has `fanout` children; ids unique and hierarchical; all done."""
    tasks = all_tasks(tree["tasks"])
    assert len(tasks) == roots * sum(fanout**d for d in range(max_depth + 1))
    ids = [t["id"] for t in tasks]
    assert len(ids) == len(set(ids)), "a task appears twice"
    for t in tasks:
        assert t["status"] == "done", t
        if t["depth"] < max_depth:
            assert [c["id"] for c in t["children"]] == [f"{t['id']}.{i}" for i in range(1, fanout + 1)]
        else:
            assert t["children"] == []
        siblings = {c["id"] for c in t["children"]}
        for c in t["children"]:
            assert set(c["depends_on"]) <= siblings - {c["id"]}
    return tasks


@pytest.mark.slow
def test_three_runners_decompose_a_devai_project_to_depth_2(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """leader + 3 runners + fake-llm: submit, watch and result through the CLI give a complete tree."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "0.05")
    _, leader = start_leader("--max-depth", "2")
    for _ in range(3):
        start_runner(leader, base_url, "--concurrency", "2")
    project = json.loads(DEVAI_PROJECT.read_text())

    submitted = run_cli([*PARADECOM, "submit", "--leader", leader, str(DEVAI_PROJECT)])
    assert submitted.returncode == 0, submitted.stderr
    project_id = submitted.stdout.strip()
    assert project_id and "\n" not in project_id

    watched = run_cli([*PARADECOM, "watch", "--leader", leader, project_id])
    assert watched.returncode == 0, watched.stderr
    # Off a terminal, watch prints one JSON object per change (tests/test_progress.py has the rest).
    final = json.loads(watched.stdout.strip().splitlines()[-1])
    assert (final["project_id"], final["state"], final["done"], final["total"]) == (project_id, "done", 13, 13)

    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--format", "json"])
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert tree["project"]["name"] == project["name"]
    tasks = assert_complete_tree(tree, fanout=3, max_depth=2)
    assert tasks[0]["title"] == project["name"]

    markdown = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--format", "markdown"])
    assert markdown.returncode == 0 and "1.3.3" in markdown.stdout


@pytest.mark.slow
def test_killed_runner_tasks_are_reassigned_and_done_once(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    stubs: Stubs,
    tmp_path: Path,
) -> None:
    """A runner SIGKILLed while holding leases: another runner gets its tasks after the lease
    timeout, the project completes, and no task appears twice."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "1.5")
    _, leader = start_leader("--lease-timeout", "2")
    _, projects = stubs(leader)
    victim = start_runner(leader, base_url, "--concurrency", "4")
    seeds = [{"title": f"Build component {i}"} for i in range(4)]
    project_id = run_cli(
        [*PARADECOM, "submit", "--leader", leader, str(write_project(tmp_path, tasks=seeds, max_depth=1))]
    ).stdout.strip()
    wait_for(lambda: summary(projects, project_id).leased == 4, what="the victim to hold 4 leases")
    victim.signal(signal.SIGKILL)
    victim.wait()
    start_runner(leader, base_url, "--concurrency", "4")
    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"])
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert_complete_tree(tree, fanout=3, max_depth=1, roots=4)
    assert tree["project"]["leases_expired"] == 4
    assert all(t["attempts"] == 2 for t in tree["tasks"])


@pytest.mark.slow
def test_stale_result_refused_and_duplicate_harmless(
    start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs, tmp_path: Path
) -> None:
    """A result under an expired lease is ABORTED and counted; the accepted one sent twice is OK
    and adds no children the second time."""
    _, leader = start_leader("--lease-timeout", "1")
    tasks_stub, projects = stubs(leader)
    project_id = projects.SubmitProject(
        project_service_pb2.SubmitProjectRequest(project=project_pb2.ProjectDefinition(
            name="Fencing", description="One root task.", max_depth=1)), timeout=5
    ).project_id  # fmt: skip
    stream = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="by-hand", max_in_flight=1))
    first = next(stream).assignment
    assert first.lease.attempt == 1
    # No heartbeat: the lease expires and the task comes back on the same stream, attempt 2.
    second = next(stream).assignment
    assert second.lease.task_id == first.lease.task_id and second.lease.attempt == 2
    children = [task_pb2.Subtask(key=str(i), title=f"Do part {i}") for i in (1, 2)]

    with pytest.raises(grpc.RpcError) as stale:
        tasks_stub.SubmitResult(task_service_pb2.SubmitResultRequest(
            task_id=first.lease.task_id, lease_token=first.lease.token, subtasks=children), timeout=5)  # fmt: skip
    assert stale.value.code() == grpc.StatusCode.ABORTED

    request = task_service_pb2.SubmitResultRequest(
        task_id=second.lease.task_id, lease_token=second.lease.token, subtasks=children
    )
    assert tasks_stub.SubmitResult(request, timeout=5).duplicate is False
    assert tasks_stub.SubmitResult(request, timeout=5).duplicate is True
    stream.cancel()
    done = summary(projects, project_id)
    assert done.state == project_pb2.PROJECT_STATE_DONE
    assert done.total == 3 and done.done == 3
    assert done.late_results_refused == 1
    tree = projects.GetTaskTree(project_service_pb2.GetTaskTreeRequest(project_id=project_id), timeout=5)
    assert [c.id for c in tree.tasks[0].children] == ["1.1", "1.2"]


@pytest.mark.slow
def test_leader_killed_and_restarted_loses_nothing(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    stubs: Stubs,
    tmp_path: Path,
) -> None:
    """The leader SIGKILLed mid-project and restarted on the same db: a lease granted before the
    crash is honoured after it, and the project completes with every task exactly once."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "0.5")
    listen = f"127.0.0.1:{free_port()}"
    db = tmp_path / "leader.db"
    leader_proc, leader = start_leader("--lease-timeout", "5", db=db, listen=listen)
    tasks_stub, _ = stubs(leader)
    seeds = [{"title": f"Deliver feature {i}"} for i in range(4)]
    path = write_project(tmp_path, tasks=seeds, max_depth=2)
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    by_hand = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="by-hand", max_in_flight=1))
    held = next(by_hand).assignment  # a seed task, leased to us before the crash
    runner = start_runner(leader, base_url, "--concurrency", "3")
    # The runner holds the 3 other seeds, its LLM calls in flight, when the leader dies. (Waiting
    # for its log, not the leader's count: a lease the leader stored but never delivered would
    # rightly expire after the restart.)
    wait_for(lambda: runner.stderr.count('"task received"') == 3, what="the runner to receive 3 tasks")

    leader_proc.signal(signal.SIGKILL)
    leader_proc.wait()
    by_hand.cancel()
    start_leader("--lease-timeout", "5", db=db, listen=listen)
    children = [task_pb2.Subtask(key=str(i), title=f"Build layer {i}") for i in (1, 2, 3)]
    accepted = wait_for(lambda: _try_submit(tasks_stub, held, children), what="the restarted leader")
    assert accepted.duplicate is False and accepted.children_queued == 3

    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"])
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert_complete_tree(tree, fanout=3, max_depth=2, roots=4)
    assert tree["project"]["leases_expired"] == 0, "no lease was lost across the restart"


def _try_submit(
    stub: task_service_pb2_grpc.TaskServiceStub, held: task_pb2.TaskAssignment, children: list[task_pb2.Subtask]
) -> task_service_pb2.SubmitResultResponse | None:
    try:
        return stub.SubmitResult(task_service_pb2.SubmitResultRequest(
            task_id=held.lease.task_id, lease_token=held.lease.token, subtasks=children), timeout=2)  # fmt: skip
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise


@pytest.mark.slow
def test_sigterm_drains_a_runner_and_loses_nothing(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    stubs: Stubs,
    tmp_path: Path,
) -> None:
    """SIGTERM on a runner holding leases: it finishes them, takes nothing new, exits 0; no lease expires."""
    base_url = fake_llm("--fanout", "2", "--atomic-depth", "5", "--latency", "1")
    _, leader = start_leader("--lease-timeout", "3")
    _, projects = stubs(leader)
    runner = start_runner(leader, base_url, "--concurrency", "2")
    seeds = [{"title": f"Write module {i}"} for i in range(4)]
    project_id = run_cli(
        [*PARADECOM, "submit", "--leader", leader, str(write_project(tmp_path, tasks=seeds, max_depth=1))]
    ).stdout.strip()
    # The runner's log, not the leader's count: a lease granted but not yet read off the stream when
    # SIGTERM lands is not in the runner's hands (it expires and is retried; nothing is lost).
    wait_for(lambda: runner.stderr.count('"task received"') == 2, what="the runner to hold 2 tasks")
    runner.signal(signal.SIGTERM)
    assert runner.wait(30) == 0
    after = summary(projects, project_id)
    assert after.leased == 0 and after.queued == 2, "the drained runner finished its 2 tasks and took no more"
    start_runner(leader, base_url, "--concurrency", "2")
    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"])
    tree = json.loads(result.stdout)
    assert_complete_tree(tree, fanout=2, max_depth=1, roots=4)
    assert tree["project"]["leases_expired"] == 0
    assert all(t["attempts"] == 1 for t in tree["tasks"])
