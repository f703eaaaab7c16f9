"""Every state transition of a task, one function each: the lease rules in one sitting.

    queued --grant--> leased --accept--> done            (children queued or stored as leaves)
                        |----fail/expire--> queued        (attempts < max_attempts, after a backoff)
                        |----fail/expire--> dead          (attempts = max_attempts, or not retryable)
                        |----release-----> queued         (no attempt charged)
    queued/leased --cancel--> cancelled

Rules kept here:
- The attempt count rises when a lease is granted, so a task that kills its runner every time
  still reaches max_attempts.
- Fencing: only the task's current lease token is accepted; anything else is refused and counted
  (`late_results_refused`). After acceptance the token is kept, so the same result sent again is
  answered OK without a change (idempotent) and a different one is refused.
- Each transition is one store transaction, committed before the caller acknowledges it, and it
  keeps the project's counters in step; when a project has nothing queued or leased it is
  consolidated in the same transaction. Results may share a transaction (`accept_many`, the group
  commit): each is still answered only after the commit that holds it.
- A runner restarted under its old id (a new session, `end_session`) ends the leases its
  predecessor held at once, as expired leases: charged, retried with backoff, tokens fenced.
- An expired lease is retried with backoff like a failure (docs/architecture.md, "The promises"): the task
  may be what kills its runners. The reassignment benchmark meets its target with it.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from paradecom import limits
from paradecom.subtasks import SubtaskShape, subtask_errors
from paradecom.v1 import project_pb2, task_pb2

from .consolidate import consolidation_error
from .errors import InvalidResult, LeaseError, ProjectClosed, StaleLease, UnknownTask
from .ids import parse_decimal_id
from .store import (
    CANCELLED,
    DEAD,
    DONE,
    LEASED,
    P_CANCELLED,
    P_DONE,
    P_FAILED,
    QUEUED,
    RUNNING,
    ProjectRow,
    Store,
    TaskRow,
)

STATUS = {
    QUEUED: project_pb2.TASK_STATUS_QUEUED,
    LEASED: project_pb2.TASK_STATUS_LEASED,
    DONE: project_pb2.TASK_STATUS_DONE,
    DEAD: project_pb2.TASK_STATUS_DEAD,
    CANCELLED: project_pb2.TASK_STATUS_CANCELLED,
}

MAX_STOP_REASON_CHARS = 200
BUDGET_TASKS = "task budget reached"
BUDGET_TOKENS = "token budget reached"


@dataclass(frozen=True)
class LeaseConfig:
    """The knobs of the lease rules (the leader's CLI flags)."""

    lease_timeout_s: float = limits.DEFAULT_LEASE_TIMEOUT_S
    max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS
    retry_backoff_s: float = 1.0  # first retry's delay; doubles per attempt
    max_retry_backoff_s: float = 30.0
    disconnect_grace_s: float = 5.0  # how long a runner's leases live after its stream drops


@dataclass(frozen=True)
class Accepted:
    """What `accept_result` did."""

    duplicate: bool
    children_queued: int


@dataclass(frozen=True)
class Result:
    """One runner's result, as `accept` takes it (for `accept_many`)."""

    task_id: str
    token: str
    subtasks: Sequence[task_pb2.Subtask]
    usage: task_pb2.Usage
    stop_reason: str = ""


def _digest(subtasks: Sequence[task_pb2.Subtask], stop_reason: str) -> str:
    h = hashlib.sha256(stop_reason.encode())
    for s in subtasks:
        h.update(b"\x00")
        h.update(s.SerializeToString(deterministic=True))
    return h.hexdigest()


def _add_usage(project: ProjectRow, usage: task_pb2.Usage, *, failed: bool = False) -> None:
    """Add one attempt's LLM usage to the project's totals (the fields of LlmUsage)."""
    totals = project.usage
    for name, value in (
        ("prompt_tokens", usage.prompt_tokens),
        ("completion_tokens", usage.completion_tokens),
        ("calls", usage.calls),
        ("reasks", usage.reasks),
        ("rate_limited", usage.rate_limited),
        ("cache_hits", usage.cache_hits),
        ("failures", int(failed)),
    ):
        # Saturating: LlmUsage carries int64, and a total that passed it would make the project unreadable.
        totals[name] = min(totals.get(name, 0) + value, limits.INT64_MAX)


class TaskLifecycle:
    """The transitions. `on_change(project_id)` is called after each commit that changed a project."""

    def __init__(
        self,
        store: Store,
        config: LeaseConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str], None] = lambda _project_id: None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.on_change = on_change
        # Derived from the store (rebuilt at start, kept in step by every transition): how many
        # live leases each runner holds, so dispatch needs no query to find a free slot.
        self.leases_by_runner: Counter[str] = Counter()
        self._count_leases()

    def _count_leases(self) -> None:
        self.leases_by_runner.clear()
        for task_id in self.store.leased_task_ids():
            task = self.store.get_task(task_id)
            if task and task.runner_id:
                self.leases_by_runner[task.runner_id] += 1

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _timeout_ms(self) -> int:
        return int(self.config.lease_timeout_s * 1000)

    def _move(self, task: TaskRow, state: str) -> None:
        """Change a task's state, keep its project's counters and the runner index in step."""
        project = self.store.get_project(task.project_id)
        assert project is not None
        project.counts[task.state] = project.counts.get(task.state, 0) - 1
        project.counts[state] = project.counts.get(state, 0) + 1
        if task.state == LEASED and task.runner_id:
            self.leases_by_runner[task.runner_id] -= 1
            if self.leases_by_runner[task.runner_id] <= 0:
                del self.leases_by_runner[task.runner_id]
        task.state = state
        if state != LEASED:
            task.lease_expires_ms = None
            task.runner_id = None
        self.store.update_task(task)
        self.store.update_project(project)

    def _finish_if_drained(self, project_id: str) -> None:
        """Consolidate the project once nothing is queued or leased."""
        project = self.store.get_project(project_id)
        assert project is not None
        if project.state != RUNNING or project.counts.get(QUEUED, 0) or project.counts.get(LEASED, 0):
            return
        error = consolidation_error(self.store.project_tasks(project_id))
        project.state = P_FAILED if error else P_DONE
        project.error = error
        project.finished_ms = self._now_ms()
        self.store.update_project(project)

    def _leased(self, task_id: str, token: str, *, count: bool = True) -> TaskRow:
        """The task if `token` is its current, unexpired lease; else the refusal to answer, counted
        in the project's late_results_refused unless `count` is False (heartbeats)."""
        task = self._task(task_id)
        if task.state == CANCELLED:
            raise ProjectClosed(f"task {task_id}: its project was cancelled")
        if task.state != LEASED or task.lease_token != token:
            if count:
                self._count_refusal(task)
            raise StaleLease(f"task {task_id}: lease {token[:8]}… is not the task's current lease")
        assert task.lease_expires_ms is not None
        if task.lease_expires_ms <= self._now_ms():
            # Expired but not reaped yet: the reaper would requeue it this instant; do it now so
            # the answer and the store agree.
            self._retry_or_bury(task, f"lease expired (runner {task.runner_id})", retryable=True, expired=True)
            if count:
                self._count_refusal(task)
            self._finish_if_drained(task.project_id)
            self.on_change(task.project_id)
            raise StaleLease(f"task {task_id}: lease {token[:8]}… expired")
        return task

    def _task(self, task_id: str) -> TaskRow:
        number = parse_decimal_id(task_id)
        task = None if number is None else self.store.get_task(number)
        if task is None:
            raise UnknownTask(f"no task {task_id!r}")
        return task

    def _count_refusal(self, task: TaskRow) -> None:
        project = self.store.get_project(task.project_id)
        assert project is not None
        # Saturating at the int32 of ProjectSummary: a runner can send stale results for ever.
        project.late_results_refused = min(project.late_results_refused + 1, limits.INT32_MAX)
        self.store.update_project(project)

    def _retry_or_bury(self, task: TaskRow, error: str, *, retryable: bool, expired: bool = False) -> str:
        """After a failed or expired attempt: back to the queue after a backoff, or dead-lettered."""
        task.last_error = error[: limits.MAX_ERROR_CHARS]
        if expired:
            project = self.store.get_project(task.project_id)
            assert project is not None
            project.leases_expired = min(project.leases_expired + 1, limits.INT32_MAX)
            self.store.update_project(project)
        if retryable and task.attempts < self.config.max_attempts:
            delay = min(self.config.retry_backoff_s * 2 ** (task.attempts - 1), self.config.max_retry_backoff_s)
            # Jitter spreads retries of tasks that failed together (an endpoint outage).
            task.not_before_ms = self._now_ms() + int(delay * 1000 * random.uniform(0.8, 1.2))
            self._move(task, QUEUED)
            return QUEUED
        self._move(task, DEAD)
        return DEAD

    @staticmethod
    def _budget_spent(project: ProjectRow) -> str:
        """The stop reason when the project may decompose no more tasks, else ""."""
        if sum(project.counts.values()) >= (project.max_tasks or limits.MAX_TASKS_PER_PROJECT):
            return BUDGET_TASKS
        spent = project.usage.get("prompt_tokens", 0) + project.usage.get("completion_tokens", 0)
        return BUDGET_TOKENS if project.max_tokens and spent >= project.max_tokens else ""

    # The transitions.

    def grant(self, runner_id: str, limit: int) -> list[TaskRow]:
        """Lease up to `limit` ready tasks to `runner_id`: attempt + 1, a fresh token, an expiry.
        A ready task whose project has spent its task or token budget becomes a leaf instead."""
        now = self._now_ms()
        granted: list[TaskRow] = []
        stopped: set[str] = set()
        with self.store.transaction():
            while len(granted) < limit:
                ready = self.store.ready_task_ids(now, limit - len(granted))
                if not ready:
                    break
                for task_id in ready:
                    task = self.store.get_task(task_id)
                    assert task is not None and task.state == QUEUED
                    project = self.store.get_project(task.project_id)
                    assert project is not None
                    stop = self._budget_spent(project)
                    if stop:
                        task.stop_reason = stop
                        self._move(task, DONE)
                        stopped.add(task.project_id)
                        continue
                    task.attempts += 1
                    task.lease_token = secrets.token_hex(16)
                    task.lease_expires_ms = now + self._timeout_ms()
                    task.runner_id = runner_id
                    task.not_before_ms = 0
                    self._move(task, LEASED)
                    self.leases_by_runner[runner_id] += 1
                    granted.append(task)
            for project_id in stopped:
                self._finish_if_drained(project_id)
        for project_id in {t.project_id for t in granted} | stopped:
            self.on_change(project_id)
        return granted

    def extend(self, task_id: str, token: str) -> tuple[int, bool]:
        """Heartbeat: push the expiry out by the lease timeout. Returns (expiry ms, cancelled)."""
        with self.store.transaction():
            task = self._task(task_id)
            if task.state == CANCELLED and task.lease_token == token:
                return 0, True
            task = self._leased(task_id, token, count=False)
            task.lease_expires_ms = self._now_ms() + self._timeout_ms()
            self.store.update_task(task)
            return task.lease_expires_ms, False

    def accept(
        self,
        task_id: str,
        token: str,
        subtasks: Sequence[task_pb2.Subtask],
        usage: task_pb2.Usage,
        stop_reason: str = "",
    ) -> Accepted:
        """The result of a task: store its children, queue those that need decomposing. With no
        subtasks and a `stop_reason`, the task itself becomes a leaf for that reason."""
        with self.store.transaction():
            task, accepted = self._accept(Result(task_id, token, subtasks, usage, stop_reason))
        self.on_change(task.project_id)
        return accepted

    def accept_many(self, results: Sequence[Result]) -> list[Accepted | Exception]:
        """Several results in one transaction (the group commit): one COMMIT and one write of each
        project row for the lot. Each entry of the answer is what `accept` would have returned or
        raised for that result (a LeaseError, or an unexpected error); the caller answers none of
        them before this returns, the group committed.

        A refusal that does not keep its changes (`keep_changes`) is raised before the result
        changed anything, so refusing one result leaves the others in the transaction intact. An
        unexpected error rolls the whole group back, and its results are then taken one at a time,
        so that error fails only its own result."""
        answers: list[Accepted | Exception] = []
        changed: set[str] = set()
        try:
            with self.store.transaction():
                for result in results:
                    try:
                        task, accepted = self._accept(result)
                    except LeaseError as exc:
                        answers.append(exc)
                        continue
                    answers.append(accepted)
                    changed.add(task.project_id)
        except Exception:
            # The rollback undid the store but not the lease index kept beside it.
            self._count_leases()
            return [self._accept_alone(r) for r in results]
        for project_id in changed:
            self.on_change(project_id)
        return answers

    def _accept_alone(self, r: Result) -> Accepted | Exception:
        try:
            return self.accept(r.task_id, r.token, r.subtasks, r.usage, r.stop_reason)
        except Exception as exc:  # handed to its caller, which answers it (INTERNAL unless a LeaseError)
            return exc

    def _accept(self, r: Result) -> tuple[TaskRow, Accepted]:
        """The work of `accept`, inside the caller's transaction."""
        task_id, token, subtasks, usage, stop_reason = r.task_id, r.token, r.subtasks, r.usage, r.stop_reason
        digest = _digest(subtasks, stop_reason)
        task = self._task(task_id)
        if task.state == DONE and task.lease_token == token and task.result_digest is not None:
            if task.result_digest == digest:
                return task, Accepted(duplicate=True, children_queued=0)
            raise LeaseError(f"task {task_id}: a different result was already accepted under this lease")
        task = self._leased(task_id, token)
        if subtasks:
            errors = subtask_errors(
                [SubtaskShape(s.key, s.title, list(s.depends_on), s.description) for s in subtasks],
                parent_title=task.title,
            )
            if errors:
                raise InvalidResult(f"task {task_id}: " + "; ".join(errors[:10]))
        elif not stop_reason:
            raise InvalidResult(f"task {task_id}: no subtasks and no stop_reason")
        project = self.store.get_project(task.project_id)
        assert project is not None
        cap = project.max_tasks or limits.MAX_TASKS_PER_PROJECT
        if sum(project.counts.values()) + len(subtasks) > cap:
            # Storing these children would pass the task budget: the task stays a leaf.
            subtasks, stop_reason = [], BUDGET_TASKS
        children = [self._child(task, i, s, project.max_depth) for i, s in enumerate(subtasks, 1)]
        self.store.insert_tasks(children)
        queued = sum(c.state == QUEUED for c in children)
        project.counts[DONE] = project.counts.get(DONE, 0) + len(children) - queued
        project.counts[QUEUED] = project.counts.get(QUEUED, 0) + queued
        _add_usage(project, usage)
        self.store.update_project(project)
        task.result_digest = digest
        task.stop_reason = "" if subtasks else stop_reason[:MAX_STOP_REASON_CHARS]
        task.last_error = ""
        self._move(task, DONE)
        self._finish_if_drained(task.project_id)
        return task, Accepted(duplicate=False, children_queued=queued)

    @staticmethod
    def _child(parent: TaskRow, position: int, s: task_pb2.Subtask, max_depth: int) -> TaskRow:
        """A subtask as a stored task: queued for decomposition, or a leaf with its stop reason."""
        depth = parent.depth + 1
        stop = ""
        if s.atomic:
            stop = "atomic"
        elif depth >= max_depth:
            stop = "max depth reached"
        return TaskRow(
            id=0,
            project_id=parent.project_id,
            parent_id=parent.id,
            path=f"{parent.path}.{position}",
            position=position,
            depth=depth,
            key=s.key,
            title=s.title.strip(),
            description=s.description,
            acceptance_criteria=list(s.acceptance_criteria),
            # Order kept, repeats dropped: a key named twice is still one dependency.
            depends_on=list(dict.fromkeys(s.depends_on)),
            atomic=s.atomic,
            atomic_reason=s.atomic_reason,
            estimate_hours=max(0.0, s.estimate_hours),
            state=DONE if stop else QUEUED,
            stop_reason=stop,
        )

    def fail(self, task_id: str, token: str, error: str, retryable: bool, usage: task_pb2.Usage) -> str:
        """A runner could not decompose the task: retry after a backoff, or dead-letter it."""
        with self.store.transaction():
            task = self._leased(task_id, token)
            project = self.store.get_project(task.project_id)
            assert project is not None
            _add_usage(project, usage, failed=True)
            self.store.update_project(project)
            state = self._retry_or_bury(task, error or "runner reported a failure", retryable=retryable)
            self._finish_if_drained(task.project_id)
        self.on_change(task.project_id)
        return state

    def release(self, task_id: str, token: str, reason: str, usage: task_pb2.Usage | None = None) -> None:
        """Give a task back: queued again at once, the attempt not charged, the usage spent under
        the lease counted."""
        with self.store.transaction():
            task = self._leased(task_id, token)
            if usage is not None and usage.ByteSize():
                project = self.store.get_project(task.project_id)
                assert project is not None
                _add_usage(project, usage)
                self.store.update_project(project)
            task.attempts = max(0, task.attempts - 1)
            task.not_before_ms = 0
            task.last_error = f"released: {reason}"[: limits.MAX_ERROR_CHARS] if reason else task.last_error
            self._move(task, QUEUED)
        self.on_change(task.project_id)

    def expire_due(self) -> int:
        """Requeue (or dead-letter) every task whose lease has passed its expiry."""
        now = self._now_ms()
        changed: set[str] = set()
        with self.store.transaction():
            for task_id in self.store.due_lease_ids(now):
                task = self.store.get_task(task_id)
                assert task is not None
                self._retry_or_bury(task, f"lease expired (runner {task.runner_id})", retryable=True, expired=True)
                changed.add(task.project_id)
            for project_id in changed:
                self._finish_if_drained(project_id)
        for project_id in changed:
            self.on_change(project_id)
        return len(changed)

    def shorten_leases(self, runner_id: str) -> int:
        """The runner's stream dropped: its leases now end within the disconnect grace unless it
        keeps heartbeating them (a draining runner does; a dead one cannot)."""
        deadline = self._now_ms() + int(self.config.disconnect_grace_s * 1000)
        count = 0
        with self.store.transaction():
            for task_id in self.store.leased_task_ids(runner_id=runner_id):
                task = self.store.get_task(task_id)
                assert task is not None and task.lease_expires_ms is not None
                if task.lease_expires_ms > deadline:
                    task.lease_expires_ms = deadline
                    self.store.update_task(task)
                    count += 1
        return count

    def end_session(self, runner_id: str) -> int:
        """The runner restarted (a new session under its id): the leases it held end now, as if
        expired. The attempt stays charged, so a task that kills its runner at every try still
        reaches max_attempts however fast the runner comes back; their tokens are refused from now
        on, so the old process, if it is still alive, cannot submit for them. Returns how many."""
        changed: set[str] = set()
        ended = 0
        with self.store.transaction():
            for task_id in self.store.leased_task_ids(runner_id=runner_id):
                task = self.store.get_task(task_id)
                assert task is not None
                error = f"lease lost: runner {runner_id} restarted (a new session took its id)"
                self._retry_or_bury(task, error, retryable=True, expired=True)
                changed.add(task.project_id)
                ended += 1
            for project_id in changed:
                self._finish_if_drained(project_id)
        for project_id in changed:
            self.on_change(project_id)
        return ended

    def renew_all_leases(self) -> int:
        """At start-up: the runners could not heartbeat while the leader was down, so every lease
        handed out before the restart gets a full lease timeout from now; tokens are unchanged."""
        deadline = self._now_ms() + self._timeout_ms()
        count = 0
        with self.store.transaction():
            for task_id in self.store.leased_task_ids():
                task = self.store.get_task(task_id)
                assert task is not None and task.lease_expires_ms is not None
                task.lease_expires_ms = max(task.lease_expires_ms, deadline)
                self.store.update_task(task)
                count += 1
        return count

    def cancel_project(self, project_id: str) -> bool:
        """Drop the project's queued and leased tasks; leased runners learn it at their next heartbeat."""
        with self.store.transaction():
            project = self.store.get_project(project_id)
            if project is None or project.state != RUNNING:
                return False
            for task_id in self.store.open_task_ids(project_id):
                task = self.store.get_task(task_id)
                assert task is not None
                self._move(task, CANCELLED)
            project = self.store.get_project(project_id)
            assert project is not None
            project.state = P_CANCELLED
            project.finished_ms = self._now_ms()
            self.store.update_project(project)
        self.on_change(project_id)
        return True
