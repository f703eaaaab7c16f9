"""Results on their way to the leader, sent several per call when several are ready.

Each lease task hands its result to `ResultSender.submit` and awaits the leader's answer to it, as
it would await a SubmitResult of its own. One call is in flight at a time; the results that become
ready meanwhile go together in the next SubmitResults call. No timer: a lone result leaves at once,
and under load a batch is what finished during the previous call's round trip, so the leader
answers (and stores: leader/group_commit.py) many results for the cost of one call.

A refusal of one result (a stale lease, a bad result) is raised to its own caller as the
`grpc.aio.AioRpcError` SubmitResult would have raised, so the caller's retry rules stay as they
are; a failure of the whole call (the leader unreachable) is raised to every caller in it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc

from paradecom import limits
from paradecom.v1 import task_service_pb2

if TYPE_CHECKING:
    from paradecom.v1.task_service_pb2_grpc import TaskServiceAsyncStub

_Answer = task_service_pb2.SubmitResultResponse | grpc.aio.AioRpcError
_Pending = tuple[task_service_pb2.SubmitResultRequest, "asyncio.Future[task_service_pb2.SubmitResultResponse]"]


def refusal(code: int, message: str) -> grpc.aio.AioRpcError:
    """The error SubmitResult would have raised for a result refused with status `code`."""
    status = next((s for s in grpc.StatusCode if s.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.aio.AioRpcError(status, grpc.aio.Metadata(), grpc.aio.Metadata(), message)


class ResultSender:
    """Sends results to the leader, batched while a call is in flight."""

    def __init__(self, stub: TaskServiceAsyncStub, deadline_s: float) -> None:
        self._stub = stub
        self._deadline_s = deadline_s
        self._pending: list[_Pending] = []
        self._sending: asyncio.Task[None] | None = None

    async def submit(self, request: task_service_pb2.SubmitResultRequest) -> task_service_pb2.SubmitResultResponse:
        """The leader's answer to `request`; raises `grpc.aio.AioRpcError` as SubmitResult would."""
        future: asyncio.Future[task_service_pb2.SubmitResultResponse] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._sending is None:
            self._sending = asyncio.create_task(self._send_all(), name="submit results")
        # A caller cancelled meanwhile (its lease task stopped) leaves its result in the batch: the
        # leader stores it and a later resend would be answered as a duplicate.
        return await future

    async def _send_all(self) -> None:
        try:
            while self._pending:
                batch = self._take_batch()
                await self._send(batch)
        finally:
            self._sending = None
            for _, future in self._pending:  # only when cancelled: nobody is left to send them
                if not future.done():
                    future.cancel()
            self._pending.clear()

    def _take_batch(self) -> list[_Pending]:
        """The oldest pending results, up to MAX_BATCH and about BATCH_BYTES (at least one)."""
        size = 0
        count = 0
        for request, _ in self._pending:
            size += request.ByteSize()
            if count and (count == limits.MAX_BATCH or size > limits.BATCH_BYTES):
                break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        requests = [request for request, _ in batch]
        if len(batch) == 1:
            answers = [await self._send_one(requests[0])]  # alone: the plain call, no batch to answer
        else:
            answers = await self._send_batch(requests)
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(answer, grpc.aio.AioRpcError):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    async def _send_one(self, request: task_service_pb2.SubmitResultRequest) -> _Answer:
        try:
            return await self._stub.SubmitResult(request, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as exc:
            return exc

    async def _send_batch(self, requests: list[task_service_pb2.SubmitResultRequest]) -> list[_Answer]:
        try:
            response = await self._stub.SubmitResults(
                task_service_pb2.SubmitResultsRequest(results=requests), timeout=self._deadline_s
            )
        except grpc.aio.AioRpcError as exc:
            return [exc] * len(requests)
        if len(response.outcomes) != len(requests):
            wrong = refusal(grpc.StatusCode.INTERNAL.value[0], "the leader answered a different number of results")
            return [wrong] * len(requests)
        return [
            outcome.response if outcome.status_code == 0 else refusal(outcome.status_code, outcome.status_message)
            for outcome in response.outcomes
        ]
