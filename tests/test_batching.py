"""Batching on the wire: several assignments per PullTask message for a runner that asks for them,
several results per SubmitResults call, each answered on its own; a runner that does not ask is
sent one assignment per message as before. Real leader processes; the last test runs real runners
and fake-llm and reads the leader's counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from helpers import Proc, Stubs, wait_for
from test_metrics import scrape, submit, value

from paradecom import limits
from paradecom.runner.results import ResultSender, refusal
from paradecom.v1 import project_pb2, project_service_pb2, task_pb2, task_service_pb2

ABORTED = grpc.StatusCode.ABORTED.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def flat_project(projects: object, seeds: int) -> str:
    definition = project_pb2.ProjectDefinition(
        name="Batches",
        description="A flat project.",
        max_depth=1,
        tasks=[project_pb2.TaskSpec(title=f"Build part {i}") for i in range(seeds)],
    )
    request = project_service_pb2.SubmitProjectRequest(project=definition)
    return str(projects.SubmitProject(request, timeout=5).project_id)  # type: ignore[attr-defined]


def result(assignment: task_pb2.TaskAssignment, token: str | None = None) -> task_service_pb2.SubmitResultRequest:
    return task_service_pb2.SubmitResultRequest(
        task_id=assignment.lease.task_id,
        lease_token=assignment.lease.token if token is None else token,
        subtasks=[task_pb2.Subtask(key=str(i), title=f"Do step {i}") for i in (1, 2)],
    )


def test_batches_by_hand(start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs) -> None:
    """Six tasks to a runner asking for batches of 4 come as 4 + 2; SubmitResults answers each
    result on its own (a stale token ABORTED, a bad result INVALID_ARGUMENT, the rest accepted,
    a resend a duplicate) and the project completes."""
    _, leader = start_leader()
    tasks_stub, projects = stubs(leader)
    project_id = flat_project(projects, 6)
    stream = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="batcher", max_in_flight=6, max_batch=4))
    first, second = next(stream), next(stream)
    assert first.WhichOneof("event") == "batch" and len(first.batch.assignments) == 4
    assert second.WhichOneof("event") == "batch" and len(second.batch.assignments) == 2
    granted = [*first.batch.assignments, *second.batch.assignments]
    assert len({a.lease.task_id for a in granted}) == 6

    bad = task_service_pb2.SubmitResultRequest(task_id=granted[5].lease.task_id, lease_token=granted[5].lease.token)
    answer = tasks_stub.SubmitResults(
        task_service_pb2.SubmitResultsRequest(
            results=[*(result(a) for a in granted[:4]), result(granted[4], token="not-the-token"), bad]
        ),
        timeout=5,
    )
    codes = [o.status_code for o in answer.outcomes]
    assert codes == [0, 0, 0, 0, ABORTED, INVALID_ARGUMENT], answer
    assert all(o.status_message for o in answer.outcomes[4:])
    assert [o.response.duplicate for o in answer.outcomes[:4]] == [False] * 4

    answer = tasks_stub.SubmitResults(
        task_service_pb2.SubmitResultsRequest(results=[result(granted[4]), result(granted[5]), result(granted[0])]),
        timeout=5,
    )
    assert [o.status_code for o in answer.outcomes] == [0, 0, 0]
    assert [o.response.duplicate for o in answer.outcomes] == [False, False, True]
    stream.cancel()

    done = projects.GetProject(project_service_pb2.GetProjectRequest(project_id=project_id), timeout=5).project
    assert done.state == project_pb2.PROJECT_STATE_DONE
    assert (done.total, done.done, done.late_results_refused) == (18, 18, 1)


def test_a_runner_that_does_not_ask_gets_one_per_message(
    start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs
) -> None:
    """max_batch unset (a runner written before batching, like clients/node-runner) or 1: every
    message holds one `assignment`, which is all such a runner reads."""
    _, leader = start_leader()
    tasks_stub, projects = stubs(leader)
    flat_project(projects, 3)
    stream = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="plain", max_in_flight=3))
    messages = [next(stream) for _ in range(3)]
    stream.cancel()
    assert [m.WhichOneof("event") for m in messages] == ["assignment"] * 3
    assert len({m.assignment.lease.task_id for m in messages}) == 3


@pytest.mark.parametrize("max_batch", [-1, limits.MAX_BATCH + 1])
def test_bad_batch_sizes_are_refused(
    start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs, max_batch: int
) -> None:
    _, leader = start_leader()
    tasks_stub, _ = stubs(leader)
    stream = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="r", max_in_flight=1, max_batch=max_batch))
    with pytest.raises(grpc.RpcError) as refused:
        next(stream)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_batch must be from 0 to 256" in (refused.value.details() or "")
    for count in (0, limits.MAX_BATCH + 1):
        one = task_service_pb2.SubmitResultRequest(task_id="t", lease_token="x", stop_reason="atomic")
        with pytest.raises(grpc.RpcError) as refused:
            tasks_stub.SubmitResults(task_service_pb2.SubmitResultsRequest(results=[one] * count), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"results: 1 to 256 required, not {count}" in (refused.value.details() or "")


@pytest.mark.slow
def test_runners_batch_end_to_end(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """Two runners of 32 slots on 128 seed tasks that take the LLM 0.3 s each: the leader sends
    the assignments in far fewer messages than leases, and stores the results in far fewer
    transactions than results; every task is leased and accepted exactly once."""
    base_url = fake_llm("--latency", "0.3")
    leader_proc, leader = start_leader("--metrics-listen", "127.0.0.1:0")
    metrics = leader_proc.metrics_address()
    project_id = submit(leader, tmp_path, max_depth=1, tasks=[{"title": f"Build part {i}"} for i in range(128)])
    for _ in range(2):
        start_runner(leader, base_url, "--concurrency", "32")

    def finished() -> dict | None:  # type: ignore[type-arg]
        samples = scrape(metrics)
        return samples if value(samples, "paradecom_projects", state="done") == 1 else None

    samples = wait_for(finished, timeout=120, what=f"project {project_id} done")
    granted = value(samples, "paradecom_leases_granted_total")
    accepted = value(samples, "paradecom_results_accepted_total")
    assert granted == accepted == 128, samples
    assert value(samples, "paradecom_tasks", state="done") == 128 * 4
    messages = value(samples, "paradecom_assignment_messages_total")
    transactions = value(samples, "paradecom_result_transactions_total")
    assert messages is not None and transactions is not None
    seen = f"{messages} messages for {granted} assignments, {transactions} transactions for {accepted} results"
    # Seen here: 17-21 messages and 33-40 transactions; one assignment per message and one result per
    # call (no batching) gave 65 and 127.
    assert messages <= granted / 2 and transactions <= accepted / 2, seen


# --- the runner's ResultSender, against an in-process stand-in for the leader's stub ---------------


class _Leader:
    """Answers SubmitResult/SubmitResults like a leader: tokens starting with "stale" are ABORTED.
    Each call waits until the test lets it through, so results can pile up meanwhile."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.called = asyncio.Event()
        self.gate = asyncio.Event()

    def _answer(self, request: task_service_pb2.SubmitResultRequest) -> task_service_pb2.SubmitResultOutcome:
        if request.lease_token.startswith("stale"):
            return task_service_pb2.SubmitResultOutcome(status_code=ABORTED, status_message="lease is not current")
        return task_service_pb2.SubmitResultOutcome(response=task_service_pb2.SubmitResultResponse(children_queued=2))

    async def SubmitResult(
        self,
        request: task_service_pb2.SubmitResultRequest,
        timeout: float,  # noqa: ASYNC109 (the stub's signature)
    ) -> task_service_pb2.SubmitResultResponse:
        self.calls.append(("SubmitResult", 1))
        self.called.set()
        await self.gate.wait()
        outcome = self._answer(request)
        if outcome.status_code:
            raise refusal(outcome.status_code, outcome.status_message)
        return outcome.response

    async def SubmitResults(
        self,
        request: task_service_pb2.SubmitResultsRequest,
        timeout: float,  # noqa: ASYNC109 (the stub's signature)
    ) -> task_service_pb2.SubmitResultsResponse:
        self.calls.append(("SubmitResults", len(request.results)))
        self.called.set()
        await self.gate.wait()
        return task_service_pb2.SubmitResultsResponse(outcomes=[self._answer(r) for r in request.results])


def _request(token: str, description: str = "") -> task_service_pb2.SubmitResultRequest:
    subtask = task_pb2.Subtask(key="1", title="Do it", description=description)
    return task_service_pb2.SubmitResultRequest(task_id=token, lease_token=token, subtasks=[subtask])


async def _submit_all(
    sender: ResultSender, leader: _Leader, requests: list[task_service_pb2.SubmitResultRequest]
) -> list[object]:
    calls = [asyncio.ensure_future(sender.submit(requests[0]))]
    await leader.called.wait()  # the first result is in flight ...
    calls += [asyncio.ensure_future(sender.submit(r)) for r in requests[1:]]
    # ... and the others, which the loop runs before the answer it is now let through, wait behind it.
    leader.gate.set()
    return list(await asyncio.gather(*calls, return_exceptions=True))


def test_results_ready_while_a_call_is_in_flight_go_together() -> None:
    leader = _Leader()
    sender = ResultSender(leader, 5.0)
    answers = asyncio.run(_submit_all(sender, leader, [_request(t) for t in ("a", "stale-b", "c", "d")]))
    # The first leaves alone at once; the three that came meanwhile share the next call.
    assert leader.calls == [("SubmitResult", 1), ("SubmitResults", 3)]
    assert isinstance(answers[0], task_service_pb2.SubmitResultResponse)
    assert isinstance(answers[1], grpc.aio.AioRpcError) and answers[1].code() == grpc.StatusCode.ABORTED
    assert answers[1].details() == "lease is not current"
    assert [a.children_queued for a in answers[2:]] == [2, 2]  # type: ignore[attr-defined]


def test_a_batch_is_closed_at_its_byte_limit() -> None:
    leader = _Leader()
    sender = ResultSender(leader, 5.0)
    big = "x" * (limits.BATCH_BYTES // 3)
    answers = asyncio.run(_submit_all(sender, leader, [_request(str(i), big) for i in range(6)]))
    assert all(isinstance(a, task_service_pb2.SubmitResultResponse) for a in answers)
    # One alone, then five of ~1/3 of the limit each: two batches of two, then the last one alone.
    assert leader.calls == [("SubmitResult", 1), ("SubmitResults", 2), ("SubmitResults", 2), ("SubmitResult", 1)]


def test_the_same_task_twice_in_one_call(start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs) -> None:
    """A result sent twice in one call is accepted once and then answered as a duplicate; a
    different result under the same lease in that call is FAILED_PRECONDITION, as it would be alone."""
    _, leader = start_leader()
    tasks_stub, projects = stubs(leader)
    project_id = flat_project(projects, 1)
    stream = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="twice", max_in_flight=1, max_batch=8))
    assignment = next(stream).assignment
    other = task_service_pb2.SubmitResultRequest(
        task_id=assignment.lease.task_id, lease_token=assignment.lease.token, stop_reason="atomic"
    )
    answer = tasks_stub.SubmitResults(
        task_service_pb2.SubmitResultsRequest(results=[result(assignment), result(assignment), other]), timeout=5
    )
    stream.cancel()
    assert [o.status_code for o in answer.outcomes] == [0, 0, grpc.StatusCode.FAILED_PRECONDITION.value[0]]
    assert [o.response.duplicate for o in answer.outcomes[:2]] == [False, True]
    done = projects.GetProject(project_service_pb2.GetProjectRequest(project_id=project_id), timeout=5).project
    assert (done.state, done.total, done.done) == (project_pb2.PROJECT_STATE_DONE, 3, 3)
