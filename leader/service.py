"""The leader's gRPC services: request checks, the call into `DecompositionLeader`, and the one
place where errors become gRPC status codes (`_status`, from the table in leader/errors.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from paradecom import limits
from paradecom.logs import get_logger
from paradecom.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

from .core import DecompositionLeader
from .errors import BadRequest, NotFound, TooLarge, status_name
from .ids import parse_decimal_id
from .lifecycle import MAX_STOP_REASON_CHARS
from .scheduler import RunnerSession, Scheduler

log = get_logger("paradecom.leader.service")

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

_TERMINAL = {
    project_pb2.PROJECT_STATE_DONE,
    project_pb2.PROJECT_STATE_CANCELLED,
    project_pb2.PROJECT_STATE_FAILED,
}
MAX_PAGE_SIZE = 1_000
DEFAULT_PAGE_SIZE = 100
MAX_ID_CHARS = 100
# What a client reads of an error the leader did not raise on purpose: its text may carry internals.
INTERNAL_MESSAGE = "internal error in the leader; see its log"


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message an error is answered with: a typed error's from the table in
    leader/errors.py, with its own message. Anything else (a KeyError from a bug, a failing disk)
    is logged with its traceback and answered INTERNAL with a generic message."""
    name = status_name(exc)
    if name is not None:
        return grpc.StatusCode[name], str(exc)
    log.error("unexpected error", error=str(exc), exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


async def _abort(context: Context, exc: Exception) -> NoReturn:
    await context.abort(*_status(exc))


async def _guard(context: Context, call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as exc:  # _status gives each kind its code; the unexpected ones INTERNAL
        await _abort(context, exc)


def _require_id(name: str, value: str) -> str:
    if not value:
        raise BadRequest(f"{name} is required")
    if len(value) > MAX_ID_CHARS:
        raise BadRequest(f"{name} is longer than {MAX_ID_CHARS} characters")
    return value


# Each Usage field and its limit (paradecom/limits.py): reports within them cannot make a project's
# totals overflow what LlmUsage carries. retry_after_ms is clamped instead (Scheduler.rate_limited).
_USAGE_LIMITS = {
    "prompt_tokens": limits.MAX_USAGE_TOKENS,
    "completion_tokens": limits.MAX_USAGE_TOKENS,
    "calls": limits.MAX_USAGE_COUNT,
    "reasks": limits.MAX_USAGE_COUNT,
    "rate_limited": limits.MAX_USAGE_COUNT,
    "cache_hits": limits.MAX_USAGE_COUNT,
    "retry_after_ms": None,
}


def _check_usage(usage: task_pb2.Usage) -> None:
    for name, high in _USAGE_LIMITS.items():
        value = getattr(usage, name)
        if value < 0:
            raise BadRequest(f"usage.{name}: {value} is negative" + (f"; the limit is 0 to {high:,}" if high else ""))
        if high is not None and value > high:
            raise BadRequest(f"usage.{name}: {value} is more than the limit of {high:,}")


def _check_subtasks(subtasks: list[task_pb2.Subtask], stop_reason: str) -> None:
    """Sizes only; the structural rules (keys, titles, dependencies) are the lifecycle's."""
    if len(stop_reason) > MAX_STOP_REASON_CHARS:
        raise BadRequest(f"stop_reason is longer than {MAX_STOP_REASON_CHARS} characters")
    if stop_reason and subtasks:
        raise BadRequest("stop_reason goes with no subtasks: a task is either decomposed or a leaf")
    if not subtasks and not stop_reason:
        raise BadRequest("subtasks: at least one is required (or none with a stop_reason)")
    if len(subtasks) > limits.MAX_SUBTASKS:
        raise BadRequest(f"subtasks: {len(subtasks)} is more than the limit of {limits.MAX_SUBTASKS}")
    for i, s in enumerate(subtasks, start=1):
        if len(s.description) > limits.MAX_DESCRIPTION_CHARS:
            raise BadRequest(f"subtask {i}: description longer than {limits.MAX_DESCRIPTION_CHARS} characters")
        if len(s.acceptance_criteria) > limits.MAX_LIST_ITEMS or len(s.depends_on) > limits.MAX_SUBTASKS:
            raise BadRequest(f"subtask {i}: too many acceptance criteria or dependencies")
        if (
            any(len(c) > limits.MAX_ITEM_CHARS for c in s.acceptance_criteria)
            or len(s.atomic_reason) > limits.MAX_ITEM_CHARS
        ):
            raise BadRequest(f"subtask {i}: an acceptance criterion or reason is longer than {limits.MAX_ITEM_CHARS}")
        if not 0 <= s.estimate_hours < 1e6:
            raise BadRequest(f"subtask {i}: estimate_hours must be from 0 to 1,000,000")


class TaskService(task_service_pb2_grpc.TaskServiceServicer):
    """What runners call."""

    def __init__(self, leader: DecompositionLeader, scheduler: Scheduler) -> None:
        self.leader = leader
        self.scheduler = scheduler

    async def PullTask(
        self, request: task_service_pb2.PullTaskRequest, context: Context
    ) -> AsyncIterator[task_service_pb2.PullTaskResponse]:
        if not request.runner_id or len(request.runner_id) > limits.MAX_RUNNER_ID_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"runner_id: 1 to {limits.MAX_RUNNER_ID_CHARS} characters required",
            )
        if not 1 <= request.max_in_flight <= limits.MAX_CONCURRENCY:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"max_in_flight must be from 1 to {limits.MAX_CONCURRENCY}"
            )
        if not 0 <= request.max_batch <= limits.MAX_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"max_batch must be from 0 to {limits.MAX_BATCH}")
        if len(request.session_id) > limits.MAX_RUNNER_ID_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"session_id: at most {limits.MAX_RUNNER_ID_CHARS} characters",
            )
        if self.scheduler.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "leader is shutting down")

        def connect() -> RunnerSession:
            return self.scheduler.connect(
                request.runner_id, request.max_in_flight, context.peer(), max_batch=request.max_batch,
                session_id=request.session_id,
            )  # fmt: skip

        session = await _guard(context, connect)
        try:
            while True:
                item = await session.outbox.get()
                if item is None:
                    return
                yield item
        finally:
            self.scheduler.disconnect(session)

    async def SubmitResult(
        self, request: task_service_pb2.SubmitResultRequest, context: Context
    ) -> task_service_pb2.SubmitResultResponse:
        try:
            return await self._accept(request)
        except Exception as exc:
            await _abort(context, exc)

    async def SubmitResults(
        self, request: task_service_pb2.SubmitResultsRequest, context: Context
    ) -> task_service_pb2.SubmitResultsResponse:
        if not 1 <= len(request.results) <= limits.MAX_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"results: 1 to {limits.MAX_BATCH} required, not {len(request.results)}",
            )
        # Accepted concurrently, so they join one group commit (leader/group_commit.py).
        answers = await asyncio.gather(*(self._accept(r) for r in request.results), return_exceptions=True)
        outcomes = []
        for answer in answers:
            if isinstance(answer, task_service_pb2.SubmitResultResponse):
                outcomes.append(task_service_pb2.SubmitResultOutcome(response=answer))
            elif isinstance(answer, Exception):
                code, message = _status(answer)
                outcomes.append(task_service_pb2.SubmitResultOutcome(status_code=code.value[0], status_message=message))
            else:
                raise answer  # a BaseException (cancellation): the whole call ends with it
        return task_service_pb2.SubmitResultsResponse(outcomes=outcomes)

    async def _accept(self, request: task_service_pb2.SubmitResultRequest) -> task_service_pb2.SubmitResultResponse:
        """Check one result and accept it; raises what the caller turns into a status code."""
        _require_id("task_id", request.task_id)
        _require_id("lease_token", request.lease_token)
        _check_subtasks(list(request.subtasks), request.stop_reason)
        _check_usage(request.usage)
        # Returns only once the group commit holding this result has committed.
        done = await self.leader.submit_result(
            request.task_id, request.lease_token, request.subtasks, request.usage, request.stop_reason
        )
        if not done.duplicate:
            self.scheduler.settled(request.task_id, request.usage, ok=True)
        return task_service_pb2.SubmitResultResponse(duplicate=done.duplicate, children_queued=done.children_queued)

    async def ExtendLease(
        self, request: task_service_pb2.ExtendLeaseRequest, context: Context
    ) -> task_service_pb2.ExtendLeaseResponse:
        def call() -> task_service_pb2.ExtendLeaseResponse:
            _require_id("task_id", request.task_id)
            _require_id("lease_token", request.lease_token)
            _check_usage(request.usage)
            expires, cancelled = self.leader.extend_lease(request.task_id, request.lease_token)
            if request.usage.rate_limited:
                self.scheduler.rate_limited(request.usage)
            return task_service_pb2.ExtendLeaseResponse(expires_at_unix_ms=expires, cancelled=cancelled)

        return await _guard(context, call)

    async def ReleaseTask(
        self, request: task_service_pb2.ReleaseTaskRequest, context: Context
    ) -> task_service_pb2.ReleaseTaskResponse:
        def call() -> task_service_pb2.ReleaseTaskResponse:
            _require_id("task_id", request.task_id)
            _require_id("lease_token", request.lease_token)
            _check_usage(request.usage)
            self.leader.release_task(
                request.task_id, request.lease_token, request.reason[: limits.MAX_ERROR_CHARS], request.usage
            )
            return task_service_pb2.ReleaseTaskResponse()

        return await _guard(context, call)

    async def FailTask(
        self, request: task_service_pb2.FailTaskRequest, context: Context
    ) -> task_service_pb2.FailTaskResponse:
        def call() -> task_service_pb2.FailTaskResponse:
            _require_id("task_id", request.task_id)
            _require_id("lease_token", request.lease_token)
            _check_usage(request.usage)
            status = self.leader.fail_task(
                request.task_id, request.lease_token, request.error[: limits.MAX_ERROR_CHARS], request.retryable,
                request.usage,
            )  # fmt: skip
            self.scheduler.settled(request.task_id, request.usage, ok=False)
            return task_service_pb2.FailTaskResponse(status=status)

        return await _guard(context, call)


class ProjectService(project_service_pb2_grpc.ProjectServiceServicer):
    """What clients call."""

    def __init__(self, leader: DecompositionLeader) -> None:
        self.leader = leader

    def _summary(self, project_id: str) -> project_pb2.ProjectSummary:
        _require_id("project_id", project_id)
        summary = self.leader.summary(project_id)
        if summary is None:
            raise NotFound(f"no project {project_id!r}")
        return summary

    async def SubmitProject(
        self, request: project_service_pb2.SubmitProjectRequest, context: Context
    ) -> project_service_pb2.SubmitProjectResponse:
        def call() -> project_service_pb2.SubmitProjectResponse:
            if not request.HasField("project"):
                raise BadRequest("project is required")
            project_id = self.leader.generate_work_queue(request.project)
            log.info("project submitted", project_id=project_id, name=request.project.name[:80])
            return project_service_pb2.SubmitProjectResponse(project_id=project_id)

        return await _guard(context, call)

    async def GetProject(
        self, request: project_service_pb2.GetProjectRequest, context: Context
    ) -> project_service_pb2.GetProjectResponse:
        return await _guard(
            context, lambda: project_service_pb2.GetProjectResponse(project=self._summary(request.project_id))
        )

    async def ListProjects(
        self, request: project_service_pb2.ListProjectsRequest, context: Context
    ) -> project_service_pb2.ListProjectsResponse:
        def call() -> project_service_pb2.ListProjectsResponse:
            if not 0 <= request.page_size <= MAX_PAGE_SIZE:
                raise BadRequest(f"page_size must be from 0 to {MAX_PAGE_SIZE}")
            before: int | None = None
            if request.page_token:
                before = parse_decimal_id(request.page_token)
                if before is None:
                    raise BadRequest("page_token is not one this leader gave")
            projects, next_seq = self.leader.list_projects(request.page_size or DEFAULT_PAGE_SIZE, before)
            return project_service_pb2.ListProjectsResponse(
                projects=projects, next_page_token="" if next_seq is None else str(next_seq)
            )

        return await _guard(context, call)

    async def WatchProject(
        self, request: project_service_pb2.WatchProjectRequest, context: Context
    ) -> AsyncIterator[project_service_pb2.WatchProjectResponse]:
        summary = await _guard(context, lambda: self._summary(request.project_id))
        event = self.leader.watch(request.project_id)
        try:
            while True:
                yield project_service_pb2.WatchProjectResponse(project=summary)
                if summary.state in _TERMINAL:
                    return
                await event.wait()
                event.clear()
                summary = await _guard(context, lambda: self._summary(request.project_id))
        finally:
            self.leader.unwatch(request.project_id, event)

    async def GetTaskTree(
        self, request: project_service_pb2.GetTaskTreeRequest, context: Context
    ) -> project_service_pb2.GetTaskTreeResponse:
        def call() -> project_service_pb2.GetTaskTreeResponse:
            if not 0 <= request.page_size <= limits.MAX_TREE_PAGE_SIZE:
                raise BadRequest(f"page_size must be from 0 to {limits.MAX_TREE_PAGE_SIZE:,}")
            after: int | None = 0
            if request.page_token:
                if not request.page_size:
                    raise BadRequest("page_token goes with a page_size above 0")
                after = parse_decimal_id(request.page_token)
                if after is None:
                    raise BadRequest("page_token is not one this leader gave")
            summary = self._summary(request.project_id)
            if request.page_size:
                assert after is not None
                tasks, last = self.leader.task_tree_page(request.project_id, after, request.page_size)
                return project_service_pb2.GetTaskTreeResponse(
                    project=summary,
                    definition=None if request.page_token else self.leader.definition(request.project_id),
                    tasks=tasks,
                    next_page_token="" if last is None else str(last),
                )
            response = project_service_pb2.GetTaskTreeResponse(
                project=summary,
                definition=self.leader.definition(request.project_id),
                tasks=self.leader.task_tree(request.project_id),
            )
            size = response.ByteSize()
            if size > limits.MAX_MESSAGE_BYTES:
                raise TooLarge(
                    f"the tree of project {request.project_id} is {size:,} bytes, over the message limit of"
                    f" {limits.MAX_MESSAGE_BYTES:,}: read it in pages (GetTaskTreeRequest.page_size)"
                )
            return response

        return await _guard(context, call)

    async def CancelProject(
        self, request: project_service_pb2.CancelProjectRequest, context: Context
    ) -> project_service_pb2.CancelProjectResponse:
        def call() -> project_service_pb2.CancelProjectResponse:
            self._summary(request.project_id)
            if self.leader.cancel_project(request.project_id):
                log.info("project cancelled", project_id=request.project_id)
            return project_service_pb2.CancelProjectResponse(project=self._summary(request.project_id))

        return await _guard(context, call)


class AdminService(admin_service_pb2_grpc.AdminServiceServicer):
    """Operating the leader: the global LLM budget, the runners it knows."""

    def __init__(self, leader: DecompositionLeader, scheduler: Scheduler) -> None:
        self.leader = leader
        self.scheduler = scheduler

    def _budget(self) -> admin_service_pb2.LlmBudget:
        b = self.scheduler.budget
        return admin_service_pb2.LlmBudget(
            requests_per_minute=b.rpm,
            tokens_per_minute=b.tpm,
            adaptive_concurrency=0 if b.cap is None else int(b.cap),
            rate_limited=b.rate_limited,
            paused_ms=b.paused_ms(),
            paused_until_unix_ms=b.paused_until_unix_ms(),
        )

    async def GetLlmBudget(
        self, request: admin_service_pb2.GetLlmBudgetRequest, context: Context
    ) -> admin_service_pb2.GetLlmBudgetResponse:
        return await _guard(context, lambda: admin_service_pb2.GetLlmBudgetResponse(budget=self._budget()))

    async def SetLlmBudget(
        self, request: admin_service_pb2.SetLlmBudgetRequest, context: Context
    ) -> admin_service_pb2.SetLlmBudgetResponse:
        def call() -> admin_service_pb2.SetLlmBudgetResponse:
            try:
                self.scheduler.budget.set_limits(request.requests_per_minute, request.tokens_per_minute)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            self.scheduler.budget.clear_pause()
            self.leader.wake_dispatcher()
            log.info("llm budget changed", rpm=request.requests_per_minute, tpm=request.tokens_per_minute)
            return admin_service_pb2.SetLlmBudgetResponse(budget=self._budget())

        return await _guard(context, call)

    async def ListRunners(
        self, request: admin_service_pb2.ListRunnersRequest, context: Context
    ) -> admin_service_pb2.ListRunnersResponse:
        leases = self.leader.leases_by_runner()
        sessions = self.scheduler.sessions
        runners = [
            admin_service_pb2.RunnerInfo(
                runner_id=s.runner_id,
                connected=True,
                in_flight=leases.get(s.runner_id, 0),
                max_in_flight=s.max_in_flight,
                peer=s.peer,
                connected_at_unix_ms=s.connected_ms,
            )
            for s in sorted(sessions.values(), key=lambda s: s.runner_id)
        ]
        # Runners whose stream dropped but whose leases live on until the disconnect grace ends.
        runners += [
            admin_service_pb2.RunnerInfo(runner_id=runner_id, connected=False, in_flight=count)
            for runner_id, count in sorted(leases.items())
            if runner_id not in sessions and count > 0
        ]
        return admin_service_pb2.ListRunnersResponse(runners=runners)
