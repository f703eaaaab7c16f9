"""The runner's main loop: one PullTask stream in, one asyncio task per lease, results out.

    run()
     ├─ pull loop: PullTask stream ── assignment(s) ──> lease task (one per lease, kept in a dict)
     │     reconnects with backoff when the stream fails, ends, or the leader drains
     └─ on stop: cancel the stream, wait for lease tasks up to drain_timeout, cancel and
        ReleaseTask the rest, close the channel

    lease task
     ├─ heartbeat side task: ExtendLease every timeout/3; returns when the lease is lost
     └─ decompose_task (in one of `concurrency` slots): prompt -> LLM -> parse, re-ask on errors
        then the result (runner/results.py: several per SubmitResults call when several are
        ready) or FailTask, retried while the leader is unreachable

Everything runs on one event loop; the waits are `asyncio.wait(..., FIRST_COMPLETED)` against the
stop event, so a stop request is seen at once wherever the loop is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

import grpc
import structlog

from paradecom import grpc_auth, limits, security
from paradecom.errors import ConfigError, DecompositionError
from paradecom.logs import get_logger
from paradecom.security import Security
from paradecom.v1 import project_pb2, task_pb2, task_service_pb2, task_service_pb2_grpc

from .cache import DecompositionCache
from .decompose import (
    ChatClient,
    Decomposer,
    DecompositionFailed,
    DecompositionOutcome,
    DecompositionSettings,
    clip_error,
)
from .llm import RATE_LIMIT_LISTENER, backoff_delay
from .metrics import RunnerMetrics
from .prompt import DEFAULT_MAX_REASKS, DEFAULT_MAX_SUBTASKS, DEFAULT_MIN_SUBTASKS
from .results import ResultSender

if TYPE_CHECKING:
    from paradecom.v1.task_service_pb2_grpc import TaskServiceAsyncStub

log = get_logger("paradecom.runner")

T = TypeVar("T")

# Deadline of one unary call; long enough for a leader busy writing to its store.
RPC_DEADLINE_S = 10.0
# Releases happen while shutting down: a leader that does not answer soon lets the lease expire.
RELEASE_DEADLINE_S = 5.0
RECONNECT_BASE_S = 0.2
RECONNECT_MAX_S = 5.0
# A stream that lived this long was healthy: the next reconnect starts again from the short delay.
STABLE_STREAM_S = 10.0
# SubmitResult/FailTask keep trying for max(2 x lease timeout, this): a restarting leader keeps
# its leases, so a result delivered once it is back still counts.
MIN_SETTLE_WINDOW_S = 30.0
SETTLE_BACKOFF_BASE_S = 0.2
SETTLE_BACKOFF_MAX_S = 5.0
# Assumed when a lease names no timeout; leaders always send one.
DEFAULT_LEASE_TIMEOUT_S = limits.DEFAULT_LEASE_TIMEOUT_S
MIN_HEARTBEAT_S = 0.05
REASON_SHUTDOWN = "runner shutting down"
# The leader may be restarting: try again.
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# The lease is no longer ours (expired, reassigned, released, project cancelled): stop working on it.
_LEASE_LOST_CODES = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})


@dataclass
class _StreamEnd:
    """How one PullTask stream went, for the reconnect backoff."""

    assignments: int = 0
    drained: bool = False
    fatal: str = ""  # a refusal no reconnect can fix (bad credentials, untrusted certificate)


@dataclass(eq=False)
class _Lease:
    """One task in hand. `settled` turns true once the leader has had its answer (or the lease is
    known to be gone), after which there is nothing to release at shutdown."""

    assignment: task_pb2.TaskAssignment
    settled: bool = False
    # HTTP 429s met while working on it, and how many of them the leader has heard of.
    rate_limited: int = 0
    reported: int = 0
    retry_after_ms: int = 0
    rate_limit_met: asyncio.Event = field(default_factory=asyncio.Event)
    # What the decomposition has spent so far, sent with ReleaseTask if the task is given back.
    usage: task_pb2.Usage = field(default_factory=task_pb2.Usage)
    # The leader's reason for refusing a result with INVALID_ARGUMENT (the lease is still ours).
    refused: str = ""

    def note_rate_limit(self, retry_after: float | None) -> None:
        self.rate_limited += 1
        self.retry_after_ms = max(self.retry_after_ms, int((retry_after or 0) * 1000))
        self.rate_limit_met.set()

    @property
    def task_id(self) -> str:
        return self.assignment.lease.task_id

    @property
    def token(self) -> str:
        return self.assignment.lease.token

    @property
    def timeout_s(self) -> float:
        ms = self.assignment.lease.timeout_ms
        return ms / 1000.0 if ms > 0 else DEFAULT_LEASE_TIMEOUT_S


def _fatal_refusal(leader: str, exc: grpc.aio.AioRpcError) -> str:
    """The one-line reason when the leader refused us in a way retrying cannot fix, else ""."""
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return f"the leader at {leader} refused our credentials: set PARADECOM_AUTH_TOKEN or --auth-token-file"
    if exc.code() == grpc.StatusCode.UNAVAILABLE and security.is_tls_failure(exc.details()):
        return (
            f"TLS handshake with the leader at {leader} failed: check that --tls-ca is the CA that signed "
            "the leader's certificate (and the leader's name matches it)"
        )
    return ""


def default_runner_id() -> str:
    """hostname-pid-random: stable for the process, distinct across processes and machines."""
    runner_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return runner_id[-limits.MAX_RUNNER_ID_CHARS :]


async def _cancel_and_wait(*tasks: asyncio.Future[object] | asyncio.Task[object]) -> None:
    for task in tasks:
        task.cancel()
    # Waiting lets each unwind (closing its RPC or HTTP request) before the caller moves on.
    await asyncio.gather(*tasks, return_exceptions=True)


class DecompositionRunner:
    """Pulls tasks from the leader at `leader` (HOST:PORT), decomposes them with an LLM, submits.

    `concurrency` tasks are decomposed at once, each by `decomposer` (runner/decompose.py). Without
    one, a Decomposer is made from the other arguments: `model` defaults to $PARADECOM_MODEL, else
    gpt-4o-mini; `llm` to an `LLMClient` for that model, configured from OPENAI_BASE_URL /
    OPENAI_API_KEY (ConfigError when neither is set). A runner closes only a decomposer it made.
    """

    def __init__(
        self,
        leader: str,
        *,
        concurrency: int = limits.DEFAULT_CONCURRENCY,
        decomposer: Decomposer | None = None,
        model: str | None = None,
        runner_id: str | None = None,
        llm: ChatClient | None = None,
        max_reasks: int = DEFAULT_MAX_REASKS,
        drain_timeout: float = limits.DEFAULT_DRAIN_TIMEOUT_S,
        min_subtasks: int = DEFAULT_MIN_SUBTASKS,
        max_subtasks: int = DEFAULT_MAX_SUBTASKS,
        cache: DecompositionCache | None = None,
        security: Security | None = None,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        if not 1 <= concurrency <= limits.MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be 1 to {limits.MAX_CONCURRENCY}, not {concurrency}")
        if drain_timeout < 0:
            raise ValueError(f"drain_timeout must be 0 or more, not {drain_timeout}")
        self._owns_decomposer = decomposer is None
        if decomposer is None:
            # The endpoint's settings (structured output, answer length, timeout) from the
            # environment, as for a runner process started without flags.
            settings = replace(
                DecompositionSettings.from_environment(model),
                min_subtasks=min_subtasks,
                max_subtasks=max_subtasks,
                max_reasks=max_reasks,
            )
            decomposer = Decomposer(settings, llm=llm, cache=cache, metrics=metrics)
        self.decomposer = decomposer
        self.leader = leader
        self.concurrency = concurrency
        self.model = decomposer.model
        self.runner_id = runner_id or default_runner_id()
        # Sent on every stream this runner opens: the same value on a reconnect keeps the leases in
        # hand; a process restarted under the same runner id sends a new one, and the leader ends
        # the dead process's leases at once instead of leaving them to fill the new one's slots.
        self.session_id = secrets.token_hex(16)
        self.drain_timeout = drain_timeout
        self.security = security
        self.metrics = metrics
        self._stop_requested = False
        # Events and the semaphore are made inside run(), on the loop that uses them.
        self._stop: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._leases: dict[asyncio.Task[None], _Lease] = {}
        self._tokens: set[str] = set()
        self._results: ResultSender | None = None

    async def decompose_task(
        self, assignment: task_pb2.TaskAssignment, usage: task_pb2.Usage | None = None
    ) -> DecompositionOutcome:
        """Decompose `assignment`'s task (Decomposer.decompose): raises only DecompositionFailed."""
        return await self.decomposer.decompose(assignment, usage)

    # --- the loop -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking work and drain (what SIGTERM calls); a second call skips the drain wait."""
        if self._stop_requested:
            if self._force is not None and not self._force.is_set():
                log.info("second stop request: releasing tasks in hand now")
                self._force.set()
            return
        self._stop_requested = True
        log.info("stop requested")
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> None:
        """Pull and work on tasks until request_stop(); then drain, release, close, and return."""
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        if self._stop_requested:
            self._stop.set()
        channel = grpc_auth.channel(self.leader, self.security)
        stub: TaskServiceAsyncStub = task_service_pb2_grpc.TaskServiceStub(channel)
        self._results = ResultSender(stub, RPC_DEADLINE_S)
        log.info(
            "runner started",
            leader=self.leader,
            runner_id=self.runner_id,
            concurrency=self.concurrency,
            model=self.model,
        )
        try:
            await self._pull_until_stopped(stub)
            await self._drain(stub, self.drain_timeout)
        except (asyncio.CancelledError, Exception):
            # Cancelled from outside (or a bug): no time to wait, but the leases still go back.
            await self._drain(stub, 0.0)
            raise
        finally:
            await channel.close()
            await self.close()
            log.info("runner stopped")

    async def close(self) -> None:
        """Close the decomposer (and its LLM client) if this runner made it. run() does it on its
        way out; a caller that only uses decompose_task calls it when done."""
        if self._owns_decomposer:
            self._owns_decomposer = False
            await self.decomposer.close()

    async def _pull_until_stopped(self, stub: TaskServiceAsyncStub) -> None:
        assert self._stop is not None
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stop.is_set():
            opened = loop.time()
            stream = await self._pull_once(stub)
            if stream.fatal:
                raise ConfigError(stream.fatal)
            if self._stop.is_set():
                break
            # A stream that delivered work or lived a while was healthy; a draining leader is not,
            # so the delay keeps growing until it is back instead of hammering it every 0.2 s.
            if not stream.drained and (stream.assignments or loop.time() - opened >= STABLE_STREAM_S):
                failures = 0
            failures += 1
            delay = backoff_delay(failures, RECONNECT_BASE_S, RECONNECT_MAX_S)
            log.info("reconnecting to the leader", delay_s=round(delay, 2), tasks_in_hand=len(self._leases))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    async def _pull_once(self, stub: TaskServiceAsyncStub) -> _StreamEnd:
        """Read one PullTask stream until it ends, fails, drains or stop is requested."""
        assert self._stop is not None
        call = stub.PullTask(
            task_service_pb2.PullTaskRequest(
                runner_id=self.runner_id,
                session_id=self.session_id,
                max_in_flight=self.concurrency,
                max_batch=min(self.concurrency, limits.MAX_BATCH),
            )
        )
        stop_wait = asyncio.ensure_future(self._stop.wait())
        read: asyncio.Future[object] | None = None
        end = _StreamEnd()
        try:
            while not self._stop.is_set():
                read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({read, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    log.info("stopped taking work")
                    return end
                try:
                    message = read.result()
                except grpc.aio.AioRpcError as exc:
                    end.fatal = _fatal_refusal(self.leader, exc)
                    log.warning("task stream failed", code=exc.code().name, details=exc.details())
                    return end
                if message is grpc.aio.EOF or not isinstance(message, task_service_pb2.PullTaskResponse):
                    log.info("leader closed the task stream")
                    return end
                event = message.WhichOneof("event")
                if event == "assignment":
                    end.assignments += 1
                    self._start_lease(stub, message.assignment)
                elif event == "batch":
                    end.assignments += len(message.batch.assignments)
                    for assignment in message.batch.assignments:
                        self._start_lease(stub, assignment)
                elif event == "drain":
                    # The leader is going away: it keeps our leases, we keep working on them and
                    # reconnect (with backoff) for new work once it is back.
                    log.info("leader is draining", reason=message.drain.reason)
                    end.drained = True
                    return end
                else:
                    log.warning("unknown message on the task stream, ignored", kind=event)
            return end
        finally:
            # Cancelling the call is what tells the leader to assign nothing more on this stream.
            call.cancel()
            stop_wait.cancel()
            if read is not None:
                read.cancel()

    def _start_lease(self, stub: TaskServiceAsyncStub, assignment: task_pb2.TaskAssignment) -> None:
        held = _Lease(assignment)
        if held.token in self._tokens:
            log.warning("assignment already in hand, ignored", task_id=held.task_id)
            return
        task = asyncio.create_task(self._work(stub, held), name=f"lease {held.task_id}")
        self._leases[task] = held
        self._tokens.add(held.token)
        task.add_done_callback(self._forget)
        if self.metrics:
            self.metrics.tasks_in_hand.inc()

    def _forget(self, task: asyncio.Task[None]) -> None:
        held = self._leases.pop(task, None)
        if held is not None:
            self._tokens.discard(held.token)
            if self.metrics:
                self.metrics.tasks_in_hand.dec()
        if not task.cancelled() and task.exception() is not None:
            # _work handles every error it expects; anything here is a bug worth a traceback.
            log.error("lease task crashed", task_id=held.task_id if held else "", exc_info=task.exception())

    # --- one lease ------------------------------------------------------------------------------

    async def _work(self, stub: TaskServiceAsyncStub, held: _Lease) -> None:
        assignment = held.assignment
        with structlog.contextvars.bound_contextvars(
            project_id=assignment.project_id, task_id=held.task_id, attempt=assignment.lease.attempt
        ):
            started = time.monotonic()
            log.info("task received", title=assignment.task.title, depth=assignment.depth)
            # Both side tasks inherit this context, so their lines carry the task's ids too, and the
            # LLM client's 429s reach this lease's heartbeat.
            RATE_LIMIT_LISTENER.set(held.note_rate_limit)
            heartbeat = asyncio.create_task(self._heartbeat(stub, held))
            work = asyncio.create_task(self._decompose_in_slot(assignment, held.usage))
            try:
                done, _ = await asyncio.wait({work, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
                if work not in done:
                    # The heartbeat only returns when the lease is gone: nobody wants this result.
                    held.settled = True
                    log.info("task abandoned")
                    return
                try:
                    outcome = work.result()
                except DecompositionError as exc:
                    await self._fail(stub, held, exc)
                    return
                await self._submit(stub, held, outcome, started)
            finally:
                await _cancel_and_wait(work, heartbeat)

    async def _decompose_in_slot(
        self, assignment: task_pb2.TaskAssignment, usage: task_pb2.Usage
    ) -> DecompositionOutcome:
        # The leader sends no more than max_in_flight, but right after a reconnect it may count
        # differently for a moment; the slots keep the LLM load at `concurrency` regardless.
        assert self._slots is not None
        async with self._slots:
            return await self.decompose_task(assignment, usage)

    async def _heartbeat(self, stub: TaskServiceAsyncStub, held: _Lease) -> None:
        """Extend the lease every third of its timeout; return only when the lease is lost."""
        loop = asyncio.get_running_loop()
        interval = max(MIN_HEARTBEAT_S, held.timeout_s / 3)
        deadline = min(RPC_DEADLINE_S, max(interval, 1.0))
        next_at = loop.time() + interval
        while True:
            # A 429 is reported at once, not at the next tick: the leader slows every runner down.
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that ends
            # this heartbeat (CPython gh-86296).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - loop.time())):
                    await held.rate_limit_met.wait()
            held.rate_limit_met.clear()
            fresh = held.rate_limited - held.reported
            request = task_service_pb2.ExtendLeaseRequest(
                task_id=held.task_id,
                lease_token=held.token,
                usage=task_pb2.Usage(rate_limited=fresh, retry_after_ms=held.retry_after_ms if fresh else 0),
            )
            try:
                response = await stub.ExtendLease(request, timeout=deadline)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _LEASE_LOST_CODES:
                    log.warning("lease lost, abandoning the task", code=exc.code().name, details=exc.details())
                    return
                # The leader may be restarting with our lease intact: try again at the next tick.
                log.info("heartbeat failed", code=exc.code().name, details=exc.details())
            else:
                held.reported += fresh
                if response.cancelled:
                    log.info("project cancelled, abandoning the task")
                    return
            # Ticks follow the schedule, not the previous call's end, so slow answers do not
            # stretch the gaps; a call slower than the interval is followed at once.
            next_at = max(next_at + interval, loop.time())

    async def _submit(
        self, stub: TaskServiceAsyncStub, held: _Lease, outcome: DecompositionOutcome, started: float
    ) -> None:
        request = task_service_pb2.SubmitResultRequest(
            task_id=held.task_id,
            lease_token=held.token,
            subtasks=outcome.subtasks,
            usage=outcome.usage,
            stop_reason=outcome.stop_reason,
        )
        assert self._results is not None
        results = self._results
        response = await self._settle("SubmitResult", held, lambda: results.submit(request))
        if held.refused:
            # Checked here by the same rules, so only a leader of another version refuses a result:
            # the lease is still ours, and FailTask hands the task on at once instead of at expiry.
            reason = f"the leader refused the result: {held.refused}"
            await self._fail(stub, held, DecompositionFailed(clip_error(reason), retryable=True, usage=outcome.usage))
            return
        if response is not None:
            if self.metrics:
                self.metrics.tasks_done.inc()
            log.info(
                "result submitted",
                subtasks=len(outcome.subtasks),
                children_queued=response.children_queued,
                duplicate=response.duplicate,
                llm_calls=outcome.usage.calls,
                seconds=round(time.monotonic() - started, 3),
            )

    async def _fail(self, stub: TaskServiceAsyncStub, held: _Lease, exc: DecompositionError) -> None:
        usage = exc.usage if isinstance(exc, DecompositionFailed) else task_pb2.Usage()
        if self.metrics:
            self.metrics.tasks_failed.inc()
        log.warning("decomposition failed", error=str(exc), retryable=exc.retryable, llm_calls=usage.calls)
        request = task_service_pb2.FailTaskRequest(
            task_id=held.task_id,
            lease_token=held.token,
            error=clip_error(str(exc)),
            retryable=exc.retryable,
            usage=usage,
        )
        response = await self._settle("FailTask", held, lambda: stub.FailTask(request, timeout=RPC_DEADLINE_S))
        if response is not None:
            log.info("failure reported", status=project_pb2.TaskStatus.Name(response.status))

    async def _settle(self, what: str, held: _Lease, call: Callable[[], Awaitable[T]]) -> T | None:
        """Make `call` (SubmitResult or FailTask) until the leader answers; None if it refused or
        stayed unreachable for the whole retry window."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + max(2 * held.timeout_s, MIN_SETTLE_WINDOW_S)
        failures = 0
        while True:
            try:
                response = await call()
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT and what == "SubmitResult":
                    held.refused = exc.details() or "invalid result"
                    log.warning(f"{what} refused", code=code.name, details=exc.details())
                    return None
                if code not in _TRANSIENT_CODES:
                    # A stale lease, a cancelled project or a result the leader will never take:
                    # trying again cannot change the answer.
                    held.settled = True
                    log.warning(f"{what} refused, dropped", code=code.name, details=exc.details())
                    return None
                failures += 1
                delay = backoff_delay(failures, SETTLE_BACKOFF_BASE_S, SETTLE_BACKOFF_MAX_S)
                if loop.time() + delay > give_up_at:
                    log.warning(f"{what} gave up, leader unreachable", code=code.name, tries=failures)
                    return None
                log.info(f"{what} failed, retrying", code=code.name, delay_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            held.settled = True
            return response

    # --- shutdown -------------------------------------------------------------------------------

    async def _drain(self, stub: TaskServiceAsyncStub, wait_s: float) -> None:
        """Wait up to `wait_s` for the tasks in hand, then cancel the rest and release them."""
        assert self._force is not None
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + wait_s
        if self._leases and wait_s > 0:
            log.info("finishing tasks in hand", tasks=len(self._leases), timeout_s=wait_s)
            force_wait = asyncio.ensure_future(self._force.wait())
            try:
                while self._leases and not self._force.is_set() and loop.time() < give_up_at:
                    await asyncio.wait(
                        {*self._leases, force_wait},
                        timeout=give_up_at - loop.time(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            finally:
                force_wait.cancel()
        left = dict(self._leases)
        if not left:
            return
        log.info("cancelling unfinished tasks", tasks=len(left))
        await _cancel_and_wait(*left)
        unsettled = [held for held in left.values() if not held.settled]
        await asyncio.gather(*(self._release(stub, held) for held in unsettled))

    async def _release(self, stub: TaskServiceAsyncStub, held: _Lease) -> None:
        request = task_service_pb2.ReleaseTaskRequest(
            task_id=held.task_id, lease_token=held.token, reason=REASON_SHUTDOWN, usage=held.usage
        )
        try:
            await stub.ReleaseTask(request, timeout=RELEASE_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            # Not fatal: the lease expires at the leader and the task is retried all the same.
            log.warning("release failed", task_id=held.task_id, code=exc.code().name, details=exc.details())
        else:
            held.settled = True
            log.info("task released", task_id=held.task_id)
