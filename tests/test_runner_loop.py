"""The runner's run() loop against an in-process gRPC TaskService on 127.0.0.1:0: concurrency,
heartbeats, lost leases, stop and drain, retries of the leader's calls, and reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import structlog
from helpers import free_port, wait_for_async
from runner_fakes import FakeChat, make_assignment
from structlog.testing import capture_logs

from paradecom import grpc_options
from paradecom.errors import DecompositionError
from paradecom.runner.loop import DecompositionRunner
from paradecom.v1 import project_pb2, task_service_pb2, task_service_pb2_grpc


class FakeLeader(task_service_pb2_grpc.TaskServiceServicer):
    """A scripted TaskService: streams whatever is put in `outbox` (None ends the stream) and
    records every call."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[task_service_pb2.PullTaskResponse | None] = asyncio.Queue()
        self.pulls: list[task_service_pb2.PullTaskRequest] = []
        self.streams_cancelled = 0
        self.extends: list[task_service_pb2.ExtendLeaseRequest] = []
        self.extend_errors: list[grpc.StatusCode] = []
        self.extend_cancelled = False
        self.extend_code: grpc.StatusCode | None = None
        self.submit_calls = 0
        self.submit_errors: list[grpc.StatusCode] = []
        self.submits: list[task_service_pb2.SubmitResultRequest] = []
        self.fails: list[task_service_pb2.FailTaskRequest] = []
        self.releases: list[task_service_pb2.ReleaseTaskRequest] = []

    async def PullTask(
        self, request: task_service_pb2.PullTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[task_service_pb2.PullTaskResponse]:
        self.pulls.append(request)
        try:
            while True:
                item = await self.outbox.get()
                if item is None:
                    return
                yield item
        except asyncio.CancelledError:
            self.streams_cancelled += 1
            raise

    async def ExtendLease(
        self, request: task_service_pb2.ExtendLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.ExtendLeaseResponse:
        self.extends.append(request)
        if self.extend_errors:
            await context.abort(self.extend_errors.pop(0), "leader restarting")
        if self.extend_code is not None:
            await context.abort(self.extend_code, "lease is gone")
        return task_service_pb2.ExtendLeaseResponse(
            expires_at_unix_ms=int(time.time() * 1000) + 300, cancelled=self.extend_cancelled
        )

    async def SubmitResult(
        self, request: task_service_pb2.SubmitResultRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.SubmitResultResponse:
        return (await self._accept([request], context))[0]

    async def SubmitResults(
        self, request: task_service_pb2.SubmitResultsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.SubmitResultsResponse:
        # Results ready together come in one call (runners send SubmitResults then); every leader
        # since the contract's first release takes it.
        responses = await self._accept(list(request.results), context)
        return task_service_pb2.SubmitResultsResponse(
            outcomes=[task_service_pb2.SubmitResultOutcome(response=r) for r in responses]
        )

    async def _accept(
        self, requests: list[task_service_pb2.SubmitResultRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> list[task_service_pb2.SubmitResultResponse]:
        """One submit call of either kind: `submit_errors` refuse a whole call, as a leader that is
        restarting would."""
        self.submit_calls += 1
        if self.submit_errors:
            await context.abort(self.submit_errors.pop(0), "not now")
        self.submits.extend(requests)
        return [task_service_pb2.SubmitResultResponse(children_queued=len(r.subtasks)) for r in requests]

    async def FailTask(
        self, request: task_service_pb2.FailTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.FailTaskResponse:
        self.fails.append(request)
        return task_service_pb2.FailTaskResponse(status=project_pb2.TASK_STATUS_QUEUED)

    async def ReleaseTask(
        self, request: task_service_pb2.ReleaseTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.ReleaseTaskResponse:
        self.releases.append(request)
        return task_service_pb2.ReleaseTaskResponse()

    def assign(self, *numbers: int, timeout_ms: int = 300) -> None:
        """Queue assignments of tasks `numbers` on the stream."""
        for n in numbers:
            self.outbox.put_nowait(
                task_service_pb2.PullTaskResponse(assignment=make_assignment(n, timeout_ms=timeout_ms))
            )

    def extends_of(self, token: str) -> int:
        """Heartbeats received for lease `token`."""
        return sum(1 for e in self.extends if e.lease_token == token)


@contextlib.asynccontextmanager
async def serving(leader: FakeLeader, port: int = 0) -> AsyncIterator[str]:
    """`leader` served on 127.0.0.1:`port`; yields HOST:PORT."""
    server = grpc.aio.server(options=grpc_options.SERVER_OPTIONS)
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(leader, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{bound}"
    finally:
        await server.stop(None)


async def stop_runner(runner: DecompositionRunner, run: asyncio.Task[None]) -> None:
    """request_stop() and wait (10 s at most) for run() to return."""
    runner.request_stop()
    await asyncio.wait_for(run, 10.0)


def run_scenario(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an async test body on a fresh event loop."""
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_run_submits_results_within_concurrency_and_heartbeats() -> None:
    """Five tasks pushed at once to a runner with concurrency 2: it asks for max_in_flight 2, never
    has more than 2 LLM calls in flight, heartbeats every lease (300 ms timeout) while it waits or
    works, and submits each result under its own lease token; each task's log lines carry its ids."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(delay=0.4)
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", runner_id="runner-a", llm=chat)
            leader.assign(1, 2, 3, 4, 5)
            with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                run = asyncio.create_task(runner.run())
                await wait_for_async(lambda: len(leader.submits) == 5, what="five results")
                await stop_runner(runner, run)
        assert [(p.runner_id, p.max_in_flight) for p in leader.pulls] == [("runner-a", 2)]
        assert chat.max_in_flight == 2
        assert {(s.task_id, s.lease_token) for s in leader.submits} == {(f"t{n}", f"tok{n}") for n in range(1, 6)}
        for s in leader.submits:
            assert [c.key for c in s.subtasks] == ["1", "2"]
            assert (s.usage.calls, s.usage.prompt_tokens, s.usage.completion_tokens) == (1, 100, 50)
        # Every lease lived at least 400 ms at a 100 ms heartbeat pace; the last ones waited for a slot.
        assert all(leader.extends_of(f"tok{n}") >= 2 for n in range(1, 6))
        assert leader.extends_of("tok5") > leader.extends_of("tok1")
        assert leader.releases == [] and leader.fails == []
        submitted = [e for e in logs if e["event"] == "result submitted"]
        assert {(e["project_id"], e["task_id"], e["attempt"]) for e in submitted} == {
            ("p1", f"t{n}", 1) for n in range(1, 6)
        }

    run_scenario(scenario)


def test_request_stop_releases_unfinished_tasks() -> None:
    """On stop the runner cancels its stream, waits drain_timeout for tasks that never finish, then
    cancels them and releases each lease with the shutdown reason; nothing is submitted."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(gate=asyncio.Event())  # never opened: the LLM never answers
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", llm=chat, drain_timeout=0.3)
            leader.assign(1, 2, 3)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: chat.calls == 2 and leader.extends_of("tok3") >= 1, what="three leases held")
            started = time.monotonic()
            await stop_runner(runner, run)
            assert time.monotonic() - started >= 0.3
            await wait_for_async(lambda: leader.streams_cancelled == 1, what="the stream to be cancelled")
        assert sorted(r.lease_token for r in leader.releases) == ["tok1", "tok2", "tok3"]
        assert {r.reason for r in leader.releases} == {"runner shutting down"}
        assert chat.cancelled == 2
        assert leader.submits == [] and leader.fails == []

    run_scenario(scenario)


def test_request_stop_lets_running_tasks_finish_and_takes_no_more() -> None:
    """A task in progress at stop keeps heartbeating and is submitted normally within the drain
    timeout; work queued after the stop is never pulled."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(delay=0.6)
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", llm=chat, drain_timeout=10)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: chat.calls == 1, what="the task to start")
            runner.request_stop()
            await wait_for_async(lambda: leader.streams_cancelled == 1, what="the stream to be cancelled")
            leader.assign(2)
            await asyncio.wait_for(run, 10)
        assert [s.lease_token for s in leader.submits] == ["tok1"]
        assert leader.extends_of("tok1") >= 2
        assert leader.releases == [] and len(leader.pulls) == 1
        assert leader.outbox.qsize() == 1 and chat.calls == 1

    run_scenario(scenario)


@pytest.mark.parametrize(
    "lost",
    ["cancelled", grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION],
    ids=["cancelled", "aborted", "not-found", "failed-precondition"],
)
def test_lost_lease_abandons_the_work(lost: str | grpc.StatusCode) -> None:
    """When a heartbeat says the project was cancelled or the lease is stale, the LLM call is
    cancelled and nothing is submitted, failed or released."""

    async def scenario() -> None:
        leader = FakeLeader()
        if lost == "cancelled":
            leader.extend_cancelled = True
        else:
            assert isinstance(lost, grpc.StatusCode)
            leader.extend_code = lost
        chat = FakeChat(gate=asyncio.Event())
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: chat.cancelled == 1, what="the LLM call to be cancelled")
            await stop_runner(runner, run)
        assert leader.extends_of("tok1") == 1
        assert leader.submits == [] and leader.fails == [] and leader.releases == []

    run_scenario(scenario)


def test_unavailable_heartbeat_is_retried_at_next_tick() -> None:
    """UNAVAILABLE heartbeats (a restarting leader) do not abandon the task; it is still submitted."""

    async def scenario() -> None:
        leader = FakeLeader()
        leader.extend_errors = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
        chat = FakeChat(delay=0.5)
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: len(leader.submits) == 1, what="the result")
            await stop_runner(runner, run)
        assert leader.extends_of("tok1") >= 3 and chat.cancelled == 0

    run_scenario(scenario)


def test_decomposition_error_is_reported_with_fail_task() -> None:
    """A task the LLM cannot decompose is reported by FailTask with its error, retryable flag and
    usage; invalid answers count their calls."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(answers=lambda _n, _t: ('{"subtasks": []}', "stop"))
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat, max_reasks=1)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: len(leader.fails) == 1, what="the failure report")
            await stop_runner(runner, run)
        (fail,) = leader.fails
        assert (fail.task_id, fail.lease_token, fail.retryable) == ("t1", "tok1", True)
        assert "no subtasks" in fail.error and fail.usage.calls == 2
        assert leader.submits == []

    run_scenario(scenario)


def test_non_retryable_llm_error_is_failed_as_not_retryable() -> None:
    """An endpoint refusal (401) reaches FailTask with retryable=False."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(error=DecompositionError("LLM request failed: HTTP 401: bad key", retryable=False))
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: len(leader.fails) == 1, what="the failure report")
            await stop_runner(runner, run)
        assert not leader.fails[0].retryable and "401" in leader.fails[0].error

    run_scenario(scenario)


def test_submit_retries_unavailable_and_drops_aborted() -> None:
    """SubmitResult is retried on UNAVAILABLE / DEADLINE_EXCEEDED until accepted; a refusal with
    ABORTED is dropped at once and the lease is not released at shutdown."""

    async def scenario() -> None:
        leader = FakeLeader()
        leader.submit_errors = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=FakeChat())
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: len(leader.submits) == 1, what="the accepted result")
            assert leader.submit_calls == 3
            leader.submit_errors = [grpc.StatusCode.ABORTED]
            leader.assign(2)
            await wait_for_async(lambda: leader.submit_calls == 4, what="the refused result")
            await stop_runner(runner, run)
        assert [s.lease_token for s in leader.submits] == ["tok1"]
        assert leader.submit_calls == 4 and leader.releases == []

    run_scenario(scenario)


def test_a_result_refused_as_invalid_is_reported_with_fail_task() -> None:
    """A result the leader refuses with INVALID_ARGUMENT leaves the lease ours (task_service.proto):
    the runner reports it at once with FailTask (retryable, the refusal as the error, the attempt's
    usage) instead of leaving the lease to expire."""

    async def scenario() -> None:
        leader = FakeLeader()
        leader.submit_errors = [grpc.StatusCode.INVALID_ARGUMENT]
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=FakeChat())
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: len(leader.fails) == 1, what="the failure report")
            await stop_runner(runner, run)
        (fail,) = leader.fails
        assert fail.lease_token == "tok1" and fail.retryable
        assert fail.error == "the leader refused the result: not now" and fail.usage.calls == 1
        assert leader.submits == [] and leader.releases == []

    run_scenario(scenario)


def test_release_at_shutdown_carries_the_usage_spent() -> None:
    """A task given back at shutdown is released with the LLM usage its decomposition has spent so
    far (ReleaseTaskRequest.usage), so the project's accounting loses nothing."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(delay=0.05, answers=lambda _n, _t: ("not JSON", "stop"))
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat, max_reasks=10)
            leader.assign(1, timeout_ms=5_000)
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: chat.calls >= 3, what="a few answers")
            runner.request_stop()
            runner.request_stop()
            await asyncio.wait_for(run, 10.0)
        (release,) = leader.releases
        assert release.lease_token == "tok1" and release.usage.calls >= 2 and release.usage.reasks >= 1
        assert release.usage.prompt_tokens == 100 * release.usage.calls

    run_scenario(scenario)


def test_reconnects_after_drain_and_stream_end() -> None:
    """A drain notice or an ended stream makes the runner reconnect, and work on the new stream
    is done; tasks in hand carry on across the reconnect."""

    async def scenario() -> None:
        leader = FakeLeader()
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", llm=FakeChat(delay=0.3))
            leader.assign(1)
            leader.outbox.put_nowait(
                task_service_pb2.PullTaskResponse(drain=task_service_pb2.DrainNotice(reason="bye"))
            )
            run = asyncio.create_task(runner.run())
            await wait_for_async(lambda: len(leader.pulls) == 2, what="a reconnect after the drain")
            leader.outbox.put_nowait(None)
            await wait_for_async(lambda: len(leader.pulls) == 3, what="a reconnect after the stream ended")
            leader.assign(2)
            await wait_for_async(lambda: len(leader.submits) == 2, what="both results")
            await stop_runner(runner, run)
        assert sorted(s.lease_token for s in leader.submits) == ["tok1", "tok2"]

    run_scenario(scenario)


def test_waits_for_a_leader_that_is_not_up_yet() -> None:
    """A runner started before its leader retries with backoff and takes work once it is up."""

    async def scenario() -> None:
        port = free_port()
        leader = FakeLeader()
        runner = DecompositionRunner(f"127.0.0.1:{port}", concurrency=1, model="m", llm=FakeChat())
        with capture_logs() as logs:
            run = asyncio.create_task(runner.run())
            await wait_for_async(
                lambda: sum(e["event"] == "reconnecting to the leader" for e in logs) >= 2,
                what="reconnect attempts",
            )
            leader.assign(1)
            async with serving(leader, port):
                await wait_for_async(lambda: len(leader.submits) == 1, what="the result")
                await stop_runner(runner, run)

    run_scenario(scenario)
