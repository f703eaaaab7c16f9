"""The scheduler: who is connected, how many free slots each runner has, and the dispatch of
ready tasks into those slots over the runners' PullTask streams (pushed, never polled)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from paradecom import limits
from paradecom.logs import get_logger
from paradecom.v1 import task_pb2, task_service_pb2

from .core import DecompositionLeader
from .errors import LeaseError
from .llm_budget import LlmBudget, estimate_tokens
from .parallelism import Parallelism

log = get_logger("paradecom.leader.scheduler")

# A dispatcher wakes at least this often, so a missed notification costs at most this delay.
MAX_IDLE_S = 1.0


@dataclass(eq=False)
class RunnerSession:
    """One open PullTask stream. `None` in the outbox ends the stream."""

    runner_id: str
    max_in_flight: int
    peer: str = ""
    connected_ms: int = 0  # when the stream opened (Unix ms), for ListRunners
    max_batch: int = 1  # assignments per message; 1 for a runner that did not ask for batches
    session_id: str = ""  # PullTaskRequest.session_id: one per runner process, "" from older runners
    outbox: asyncio.Queue[task_service_pb2.PullTaskResponse | None] = field(default_factory=asyncio.Queue)


def _messages(
    assignments: list[task_pb2.TaskAssignment], sizes: list[int], max_batch: int
) -> Iterator[task_service_pb2.PullTaskResponse]:
    """The stream messages that carry `assignments`: one each, or batches of up to `max_batch`
    assignments and about `limits.BATCH_BYTES` (a batch holds at least one, whatever its size)."""
    if max_batch <= 1:
        for assignment in assignments:
            yield task_service_pb2.PullTaskResponse(assignment=assignment)
        return
    batch: list[task_pb2.TaskAssignment] = []
    batch_bytes = 0
    for assignment, size in zip(assignments, sizes, strict=True):
        if batch and (len(batch) == max_batch or batch_bytes + size > limits.BATCH_BYTES):
            yield _batch_message(batch)
            batch, batch_bytes = [], 0
        batch.append(assignment)
        batch_bytes += size
    if batch:
        yield _batch_message(batch)


def _batch_message(batch: list[task_pb2.TaskAssignment]) -> task_service_pb2.PullTaskResponse:
    if len(batch) == 1:
        return task_service_pb2.PullTaskResponse(assignment=batch[0])
    return task_service_pb2.PullTaskResponse(batch=task_service_pb2.AssignmentBatch(assignments=batch))


def _assignments(message: task_service_pb2.PullTaskResponse | None) -> Sequence[task_pb2.TaskAssignment]:
    if message is None:
        return ()
    if message.HasField("assignment"):
        return (message.assignment,)
    return message.batch.assignments


class Scheduler:
    """Matches ready tasks with free runner slots."""

    def __init__(
        self,
        leader: DecompositionLeader,
        budget: LlmBudget | None = None,
        parallelism: Parallelism | None = None,
    ) -> None:
        self.leader = leader
        self.budget = budget or LlmBudget()
        # How many tasks could run at once (leader/parallelism.py); enforced only in a local auto run.
        self.parallelism = parallelism or Parallelism(leader, self.budget)
        self.sessions: dict[str, RunnerSession] = {}
        # The last non-empty session id seen under each runner id whose stream is open or that
        # still holds leases: a new stream with another one is a restart (see connect).
        self._last_session: dict[str, str] = {}
        self.draining = False
        self._turn = 0
        # Token estimates of the tasks in flight, to correct the budget when their usage comes back,
        # and when each went out, for the mean task duration the parallelism bound uses.
        self._estimates: dict[str, tuple[int, float]] = {}
        self._typical_estimate = estimate_tokens(0)
        # Stream messages that carried assignments (fewer than the leases granted when batched).
        self.assignment_messages = 0

    def connect(
        self, runner_id: str, max_in_flight: int, peer: str = "", *, max_batch: int = 1, session_id: str = ""
    ) -> RunnerSession:
        """Register a runner's stream; a new stream with the same runner id replaces the old one.
        With the same session id (or none) it is a reconnect and keeps the leases held under the id;
        with another session id the runner restarted, and those leases end now (end_session), so
        the dead process's leases do not fill the new one's slots until they expire."""
        old = self.sessions.get(runner_id)
        if old is not None:
            self._close(old)
        ended = 0
        if session_id:
            previous = self._last_session.get(runner_id)
            if previous is not None and previous != session_id:
                ended = self.leader.end_session(runner_id)
            self._last_session[runner_id] = session_id
        session = RunnerSession(
            runner_id, max_in_flight, peer, int(self.leader.clock() * 1000), max(1, max_batch), session_id=session_id
        )
        self.sessions[runner_id] = session
        self._forget_sessions()
        log.info(
            "runner connected", runner_id=runner_id, max_in_flight=max_in_flight, max_batch=max_batch, peer=peer,
            restarted_leases_ended=ended,
        )  # fmt: skip
        self.leader.wake_dispatcher()
        return session

    def disconnect(self, session: RunnerSession) -> None:
        """The stream ended: give back what never left the outbox, shorten the runner's leases."""
        self._close(session)
        if self.sessions.get(session.runner_id) is session:
            del self.sessions[session.runner_id]
            shortened = self.leader.shorten_leases(session.runner_id)
            log.info("runner disconnected", runner_id=session.runner_id, leases_in_grace=shortened)
            self.leader.wake_dispatcher()

    def _forget_sessions(self) -> None:
        """Drop the session ids of runner ids with no stream and no lease: a restart under such an
        id has nothing to take back, and the map stays as small as the runners that matter."""
        leases = self.leader.leases_by_runner()
        for runner_id in [r for r in self._last_session if r not in self.sessions and not leases.get(r)]:
            del self._last_session[runner_id]

    def _close(self, session: RunnerSession) -> None:
        while not session.outbox.empty():
            item = session.outbox.get_nowait()
            for assignment in _assignments(item):
                with contextlib.suppress(LeaseError):
                    self.leader.release_task(
                        assignment.lease.task_id, assignment.lease.token, "assignment not delivered"
                    )
        session.outbox.put_nowait(None)

    def drain(self, reason: str) -> None:
        """Stop dispatching and tell every runner to stop taking work from this leader."""
        self.draining = True
        for session in list(self.sessions.values()):
            session.outbox.put_nowait(
                task_service_pb2.PullTaskResponse(drain=task_service_pb2.DrainNotice(reason=reason))
            )

    def end_streams(self) -> None:
        """End every open PullTask stream (after `drain`, at shutdown)."""
        for session in list(self.sessions.values()):
            session.outbox.put_nowait(None)

    def dispatch(self) -> int:
        """Fill every free slot with a ready task; returns how many were handed out."""
        if self.draining:
            return 0
        sessions = list(self.sessions.values())
        if not sessions:
            return 0
        # Start at a different runner each round, so a short queue is spread over all of them.
        self._turn = (self._turn + 1) % len(sessions)
        handed = 0
        leases = self.leader.leases_by_runner()
        room: int | None = None
        if self.parallelism.enforce:
            room = self.parallelism.limit(self._typical_estimate) - sum(leases.values())
        now = time.monotonic()
        for session in sessions[self._turn :] + sessions[: self._turn]:
            free = session.max_in_flight - leases.get(session.runner_id, 0)
            if room is not None:
                free = min(free, room - handed)
            if free <= 0:
                continue
            allowed = self.budget.admit(free, sum(leases.values()), self._typical_estimate)
            if allowed <= 0:
                break  # the budget holds everything back; run() wakes when it has room
            assignments = self.leader.lease_tasks(session.runner_id, allowed)
            sizes = []
            for assignment in assignments:
                size = assignment.ByteSize()
                sizes.append(size)
                # Calibrated on the task's context alone; the LlmRequest repeats it as the prompt.
                estimate = estimate_tokens(size - assignment.llm_request.ByteSize())
                self._estimates[assignment.lease.task_id] = (estimate, now)
                self._typical_estimate = estimate
                self.budget.spend(1, estimate)
            for message in _messages(assignments, sizes, session.max_batch):
                session.outbox.put_nowait(message)
                self.assignment_messages += 1
            handed += len(assignments)
            if len(assignments) < allowed:
                break  # the queue is empty
        return handed

    def settled(self, task_id: str, usage: task_pb2.Usage, *, ok: bool) -> None:
        """A task's result or failure came back: correct the budget's estimates with its usage."""
        estimate, sent_at = self._estimates.pop(task_id, (self._typical_estimate, math.nan))
        self.parallelism.observe_task(time.monotonic() - sent_at)
        if usage.calls or usage.prompt_tokens or usage.completion_tokens:
            self.budget.spend(usage.calls - 1, usage.prompt_tokens + usage.completion_tokens - estimate)
        if ok and not usage.rate_limited:
            self.budget.on_success(sum(s.max_in_flight for s in self.sessions.values()))

    def desired_runners(self) -> int:
        """Runners like the connected ones (by their mean slots) it takes to run what could run now."""
        sessions = list(self.sessions.values())
        per_runner = sum(s.max_in_flight for s in sessions) / len(sessions) if sessions else None
        return self.parallelism.desired_runners(self._typical_estimate, per_runner)

    def desired_slots(self) -> int:
        """Tasks that could usefully be in flight now (leader/parallelism.py)."""
        return self.parallelism.desired(self._typical_estimate)

    def rate_limited(self, usage: task_pb2.Usage) -> None:
        """A runner met 429s (reported with a heartbeat): slow every runner down."""
        in_flight = sum(self.leader.leases_by_runner().values())
        retry_after_ms = min(usage.retry_after_ms, limits.MAX_RETRY_AFTER_MS)  # a longer one is taken as the limit
        self.budget.on_rate_limited(usage.rate_limited, retry_after_ms / 1000, in_flight)
        log.info("rate limited", count=usage.rate_limited, in_flight=in_flight, cap=self.budget.cap)

    async def run(self) -> None:
        """Dispatch whenever something changed, or when the next retry backoff ends."""
        while True:
            self.dispatch()
            waits = [self.leader.next_backoff_seconds(), self.budget.seconds_until_room(self._typical_estimate)]
            await self.leader.wait_for_change(min([MAX_IDLE_S, *(w for w in waits if w is not None)]))
