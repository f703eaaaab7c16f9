"""Group commit: results that arrive together share one transaction, and none is answered before
the commit that holds it. In process on the real store (with a second connection as the witness of
what is committed), then end to end: acknowledged results survive the leader being SIGKILLed."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from helpers import Proc, Stubs, free_port, run_cli, wait_for
from test_cluster import PARADECOM, summary, write_project

from paradecom.leader.core import DecompositionLeader
from paradecom.leader.lifecycle import Result, StaleLease
from paradecom.leader.store import SqliteStore
from paradecom.project import ProjectDefinition, SeedTask
from paradecom.v1 import project_pb2, task_pb2, task_service_pb2

CHILDREN = [task_pb2.Subtask(key=str(i), title=f"Build layer {i}", atomic=True) for i in (1, 2, 3)]


def flat(k: int) -> ProjectDefinition:
    return ProjectDefinition(
        name="Flat", description="K seeds, depth 1.", max_depth=1, tasks=[SeedTask(title=f"Seed {i}") for i in range(k)]
    )


def test_results_arriving_together_share_one_commit_and_are_answered_after_it(tmp_path: Path) -> None:
    """Eight results submitted at once are stored in one transaction; when each caller resumes, a
    second connection already reads its task as done (committed); a stale token in the same group
    is refused on its own and the others are accepted."""
    db = tmp_path / "leader.db"
    leader = DecompositionLeader(SqliteStore(db))
    project_id = leader.generate_work_queue(flat(9))
    assignments = leader.lease_tasks("r", 9)
    stale = assignments.pop()
    witness = sqlite3.connect(db)

    async def submit(a: task_pb2.TaskAssignment, token: str) -> str:
        await leader.submit_result(a.lease.task_id, token, CHILDREN, task_pb2.Usage(calls=1))
        (state,) = witness.execute("SELECT state FROM tasks WHERE id = ?", (int(a.lease.task_id),)).fetchone()
        return str(state)

    async def main() -> list[str | BaseException]:
        calls = [submit(a, a.lease.token) for a in assignments] + [submit(stale, "0" * 32)]
        return await asyncio.gather(*calls, return_exceptions=True)

    *states, refused = asyncio.run(main())
    assert states == ["done"] * 8, "each caller resumed only after its result was committed"
    assert isinstance(refused, StaleLease)
    assert leader.result_transactions() == 1
    s = leader.summary(project_id)
    assert s is not None
    assert (s.done, s.leased, s.late_results_refused, s.usage.calls) == (8 + 24, 1, 1, 8)
    assert leader.leases_by_runner()["r"] == 1


def test_an_unexpected_error_fails_only_its_own_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result that breaks the group's transaction in an unforeseen way rolls the group back; the
    others are then stored one by one and accepted, and the store and lease index agree."""
    leader = DecompositionLeader(SqliteStore(tmp_path / "leader.db"))
    project_id = leader.generate_work_queue(flat(4))
    assignments = leader.lease_tasks("r", 4)
    broken = assignments[2].lease.task_id
    real = leader._lifecycle._accept

    def accept(r: Result) -> object:
        if r.task_id == broken:
            raise RuntimeError("disk on fire")
        return real(r)

    monkeypatch.setattr(leader._lifecycle, "_accept", accept)

    async def main() -> list[object]:
        answers: list[object] = await asyncio.gather(
            *(leader.submit_result(a.lease.task_id, a.lease.token, CHILDREN) for a in assignments),
            return_exceptions=True,
        )
        return answers

    answers = asyncio.run(main())
    assert [type(a).__name__ for a in answers] == ["Accepted", "Accepted", "RuntimeError", "Accepted"]
    s = leader.summary(project_id)
    assert s is not None and (s.done, s.leased) == (3 + 9, 1)
    assert leader.leases_by_runner() == {"r": 1}


@pytest.mark.slow
def test_acknowledged_results_survive_a_leader_sigkill(
    start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs, tmp_path: Path
) -> None:
    """Twenty results sent at once and all acknowledged, then the leader SIGKILLed at once: the
    restarted leader has every one of them (60 children, the project done)."""
    k = 20
    db, listen = tmp_path / "leader.db", f"127.0.0.1:{free_port()}"
    leader_proc, leader = start_leader(db=db, listen=listen)
    tasks_stub, projects_stub = stubs(leader)
    path = write_project(tmp_path, tasks=[{"title": f"Deliver feature {i}"} for i in range(k)], max_depth=1)
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    stream = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="by-hand", max_in_flight=k))
    held = [next(stream).assignment for _ in range(k)]
    pending = [
        tasks_stub.SubmitResult.future(
            task_service_pb2.SubmitResultRequest(
                task_id=a.lease.task_id, lease_token=a.lease.token, subtasks=CHILDREN, usage=task_pb2.Usage(calls=1)
            ),
            timeout=10,
        )
        for a in held
    ]
    answers = [p.result() for p in pending]
    assert all(not a.duplicate and a.children_queued == 0 for a in answers)
    leader_proc.signal(signal.SIGKILL)
    leader_proc.wait()
    stream.cancel()

    start_leader(db=db, listen=listen)
    tasks_stub, projects_stub = stubs(leader)
    after = _when_up(lambda: summary(projects_stub, project_id))
    assert after.state == project_pb2.PROJECT_STATE_DONE
    assert (after.done, after.leased, after.queued, after.usage.calls) == (k + 3 * k, 0, 0, k)


def _when_up(call: Callable[[], project_pb2.ProjectSummary]) -> project_pb2.ProjectSummary:
    def attempt() -> project_pb2.ProjectSummary | None:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return None
            raise

    result: project_pb2.ProjectSummary = wait_for(attempt, what="the restarted leader")
    return result
