"""The lease rules, one transition at a time, on the real store with a hand-driven clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paradecom.leader.core import DecompositionLeader
from paradecom.leader.errors import status_name
from paradecom.leader.lifecycle import InvalidResult, LeaseConfig, LeaseError, StaleLease, UnknownTask
from paradecom.leader.store import SqliteStore
from paradecom.project import ProjectDefinition, SeedTask
from paradecom.runner.prompt import RequestSettings, build_request
from paradecom.v1 import project_pb2, task_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, **config: float) -> tuple[DecompositionLeader, Clock]:
    clock = Clock()
    settings = {"lease_timeout_s": 10.0, "max_attempts": 3, "retry_backoff_s": 1.0, **config}
    leader = DecompositionLeader(SqliteStore(tmp_path / "t.db"), LeaseConfig(**settings), clock=clock)
    return leader, clock


def children(*titles: str, atomic: bool = False) -> list[task_pb2.Subtask]:
    return [task_pb2.Subtask(key=str(i), title=t, atomic=atomic) for i, t in enumerate(titles, start=1)]


PROJECT = ProjectDefinition(name="P", description="A project.", max_depth=2)


def test_grant_charges_an_attempt_and_fences_old_tokens(tmp_path: Path) -> None:
    """Each lease raises the attempt count and gets a new token; only the newest token is accepted."""
    leader, clock = make(tmp_path)
    pid = leader.generate_work_queue(PROJECT)
    (first,) = leader.lease_tasks("r1", 5)
    assert first.lease.attempt == 1 and first.depth == 0 and first.max_depth == 2
    clock.now += 11
    assert leader.expire_due() == 1
    assert leader.lease_tasks("r2", 5) == [], "the retry waits out its backoff"
    clock.now += 2
    (second,) = leader.lease_tasks("r2", 5)
    assert second.lease.attempt == 2 and second.lease.token != first.lease.token
    with pytest.raises(StaleLease):
        leader.process_results(first.lease.task_id, first.lease.token, children("Do a", "Do b"))
    with pytest.raises(StaleLease):
        leader.extend_lease(first.lease.task_id, first.lease.token)
    summary = leader.summary(pid)
    assert summary is not None and summary.late_results_refused == 1, "the stale heartbeat is not counted"
    assert summary.leases_expired == 1


def test_max_attempts_dead_letters_and_the_project_still_finishes(tmp_path: Path) -> None:
    """After max_attempts expired leases the task is dead with its error; the project is DONE."""
    leader, clock = make(tmp_path, max_attempts=2)
    pid = leader.generate_work_queue(PROJECT)
    for _ in range(2):
        clock.now += 60
        assert len(leader.lease_tasks("r", 1)) == 1
        clock.now += 11
        leader.expire_due()
    summary = leader.summary(pid)
    assert summary is not None
    assert summary.state == project_pb2.PROJECT_STATE_DONE and summary.dead == 1
    (root,) = leader.task_tree(pid)
    assert root.status == project_pb2.TASK_STATUS_DEAD and root.attempts == 2 and "lease expired" in root.last_error


def test_release_charges_no_attempt_and_fail_not_retryable_is_final(tmp_path: Path) -> None:
    """ReleaseTask gives the attempt back; FailTask(retryable=False) dead-letters at once."""
    leader, _ = make(tmp_path)
    pid = leader.generate_work_queue(PROJECT)
    (a,) = leader.lease_tasks("r", 1)
    leader.release_task(a.lease.task_id, a.lease.token, "shutting down")
    (b,) = leader.lease_tasks("r", 1)
    assert b.lease.attempt == 1
    status = leader.fail_task(b.lease.task_id, b.lease.token, "model refuses", retryable=False)
    assert status == project_pb2.TASK_STATUS_DEAD
    (root,) = leader.task_tree(pid)
    assert root.last_error == "model refuses"


def test_children_queue_until_max_depth_and_atomic_ones_are_leaves(tmp_path: Path) -> None:
    """Non-atomic children below max depth are queued; atomic ones and those at max depth are leaves;
    ids are hierarchical and dependencies resolve to sibling ids."""
    leader, _ = make(tmp_path)
    pid = leader.generate_work_queue(PROJECT)
    (root,) = leader.lease_tasks("r", 1)
    subs = children("Plan it", "Build it", "Ship it")
    subs[1].depends_on.append("1")
    subs[2].atomic = True
    done = leader.process_results(root.lease.task_id, root.lease.token, subs)
    assert done.children_queued == 2
    batch = leader.lease_tasks("r", 10)
    assert sorted(a.task.title for a in batch) == ["Build it", "Plan it"]
    assert batch[0].ancestors[0].title == "P" and set(batch[0].sibling_titles) >= {"Ship it"}
    for a in batch:
        leader.process_results(a.lease.task_id, a.lease.token, children("Draft it", "Polish it"))
    summary = leader.summary(pid)
    assert summary is not None and summary.state == project_pb2.PROJECT_STATE_DONE and summary.total == 8
    (tree,) = leader.task_tree(pid)
    assert [c.id for c in tree.children] == ["1.1", "1.2", "1.3"]
    assert list(tree.children[1].depends_on) == ["1.1"]
    assert [c.stop_reason for c in tree.children[0].children] == ["max depth reached"] * 2
    assert tree.children[2].stop_reason == "atomic" and tree.stop_reason == ""


def test_duplicate_result_is_ok_and_a_different_one_is_refused(tmp_path: Path) -> None:
    """Same result under the accepted lease: OK, nothing added. Another result: refused."""
    leader, _ = make(tmp_path)
    pid = leader.generate_work_queue(ProjectDefinition(name="P", description="d", max_depth=1))
    (a,) = leader.lease_tasks("r", 1)
    assert not leader.process_results(a.lease.task_id, a.lease.token, children("A x", "B y")).duplicate
    assert leader.process_results(a.lease.task_id, a.lease.token, children("A x", "B y")).duplicate
    with pytest.raises(LeaseError):
        leader.process_results(a.lease.task_id, a.lease.token, children("C z", "D w"))
    summary = leader.summary(pid)
    assert summary is not None and summary.total == 3


def test_bad_results_and_unknown_tasks_are_refused(tmp_path: Path) -> None:
    """Cycles, dangling dependencies and unknown task ids are refused without changing state."""
    leader, _ = make(tmp_path)
    leader.generate_work_queue(PROJECT)
    (a,) = leader.lease_tasks("r", 1)
    cyclic = children("Do a", "Do b")
    cyclic[0].depends_on.append("2")
    cyclic[1].depends_on.append("1")
    with pytest.raises(LeaseError, match="cycle"):
        leader.process_results(a.lease.task_id, a.lease.token, cyclic)
    dangling = children("Do a")
    dangling[0].depends_on.append("9")
    with pytest.raises(LeaseError, match="not a sibling"):
        leader.process_results(a.lease.task_id, a.lease.token, dangling)
    with pytest.raises(UnknownTask):
        leader.extend_lease("999", a.lease.token)
    with pytest.raises(UnknownTask):
        leader.extend_lease("not-a-number", a.lease.token)
    expires, cancelled = leader.extend_lease(a.lease.task_id, a.lease.token)
    assert expires > 0 and not cancelled


def test_cancel_tells_the_runner_at_its_heartbeat(tmp_path: Path) -> None:
    """CancelProject drops queued work; the runner's next heartbeat answers cancelled."""
    leader, _ = make(tmp_path)
    pid = leader.generate_work_queue(
        ProjectDefinition(name="P", description="d", tasks=[SeedTask("One"), SeedTask("Two")])
    )
    (a,) = leader.lease_tasks("r", 1)
    assert leader.cancel_project(pid)
    assert leader.extend_lease(a.lease.task_id, a.lease.token) == (0, True)
    summary = leader.summary(pid)
    assert summary is not None and summary.state == project_pb2.PROJECT_STATE_CANCELLED and summary.cancelled == 2


def test_restart_keeps_leases_and_counters(tmp_path: Path) -> None:
    """A new leader on the same db renews outstanding leases and accepts their results."""
    leader, clock = make(tmp_path)
    pid = leader.generate_work_queue(PROJECT)
    (a,) = leader.lease_tasks("r", 1)
    leader.close()
    clock.now += 9.5  # most of the lease has gone by while the leader was down
    again = DecompositionLeader(SqliteStore(tmp_path / "t.db"), LeaseConfig(lease_timeout_s=10.0), clock=clock)
    assert again.renew_all_leases() == 1
    assert again.leases_by_runner()["r"] == 1
    clock.now += 5  # past the old expiry, inside the renewed one
    assert again.expire_due() == 0
    assert again.process_results(a.lease.task_id, a.lease.token, children("Do a", "Do b")).children_queued == 2
    summary = again.summary(pid)
    assert summary is not None and summary.queued == 2 and summary.done == 1


def test_a_refused_result_keeps_the_lease_for_a_corrected_one(tmp_path: Path) -> None:
    """A result the structural rules refuse (INVALID_ARGUMENT: near-duplicate siblings) changes
    nothing: the lease is still the runner's, a corrected result under it is accepted, no attempt is
    charged and no late result counted (task_service.proto, SubmitResult)."""
    leader, _ = make(tmp_path)
    pid = leader.generate_work_queue(PROJECT)
    (a,) = leader.lease_tasks("r", 1)
    with pytest.raises(InvalidResult, match="nearly the same") as refused:
        leader.process_results(
            a.lease.task_id, a.lease.token, children("Set up the CI pipeline", "Set up the CI pipeline and deployment")
        )
    assert status_name(refused.value) == "INVALID_ARGUMENT"
    expires, cancelled = leader.extend_lease(a.lease.task_id, a.lease.token)
    assert expires > 0 and not cancelled
    done = leader.process_results(a.lease.task_id, a.lease.token, children("Load the data", "Train the model"))
    assert not done.duplicate and done.children_queued == 2
    summary = leader.summary(pid)
    assert summary is not None and summary.late_results_refused == 0 and summary.total == 3
    (root,) = leader.task_tree(pid)
    assert root.attempts == 1


def test_release_counts_its_usage_and_repeated_dependencies_are_stored_once(tmp_path: Path) -> None:
    """ReleaseTask's usage is added to the project's (the attempt is still not charged); a key
    repeated in depends_on is one dependency."""
    leader, _ = make(tmp_path)
    pid = leader.generate_work_queue(PROJECT)
    (a,) = leader.lease_tasks("r", 1)
    spent = task_pb2.Usage(prompt_tokens=120, completion_tokens=30, calls=2, reasks=1)
    leader.release_task(a.lease.task_id, a.lease.token, "runner shutting down", spent)
    (b,) = leader.lease_tasks("r", 1)
    assert b.lease.attempt == 1
    subs = children("Plan it", "Build it")
    subs[1].depends_on.extend(["1", "1"])
    leader.process_results(b.lease.task_id, b.lease.token, subs, task_pb2.Usage(prompt_tokens=10, calls=1))
    summary = leader.summary(pid)
    assert summary is not None
    assert (summary.usage.prompt_tokens, summary.usage.completion_tokens) == (130, 30)
    assert (summary.usage.calls, summary.usage.reasks, summary.usage.failures) == (3, 1, 0)
    (root,) = leader.task_tree(pid)
    assert list(root.children[1].depends_on) == ["1.1"]


def test_every_assignment_carries_the_llm_request_the_leader_was_given(tmp_path: Path) -> None:
    """The leader's RequestSettings shape every assignment's LlmRequest: version, fan-out, re-asks,
    answer profile (schema); it is what prompt.build_request makes of the rest of the assignment."""
    settings = RequestSettings(min_subtasks=3, max_subtasks=4, max_reasks=1, answer_profile="small")
    leader = DecompositionLeader(
        SqliteStore(tmp_path / "t.db"), LeaseConfig(lease_timeout_s=10.0), request_settings=settings
    )
    leader.generate_work_queue(PROJECT)
    (a,) = leader.lease_tasks("r", 1)
    request = a.llm_request
    assert request.version == "paradecom.decompose/1"
    assert (request.min_subtasks, request.max_subtasks, request.reask.max_reasks) == (3, 4, 1)
    assert "{reason}" in request.reask.template
    schema = json.loads(request.answer_schema_json)
    assert schema["properties"]["subtasks"]["maxItems"] == 4
    assert sorted(schema["properties"]["subtasks"]["items"]["properties"]) == ["atomic", "depends_on", "title"]
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    bare = task_pb2.TaskAssignment()
    bare.CopyFrom(a)
    bare.ClearField("llm_request")
    assert build_request(bare, settings) == request
    default = DecompositionLeader(SqliteStore(tmp_path / "d.db"), LeaseConfig(lease_timeout_s=10.0))
    default.generate_work_queue(PROJECT)
    (d,) = default.lease_tasks("r", 1)
    assert (d.llm_request.min_subtasks, d.llm_request.max_subtasks, d.llm_request.reask.max_reasks) == (2, 7, 2)
