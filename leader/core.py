"""`DecompositionLeader`: the leader's state machine without any transport.

It owns the store, the task lifecycle, the group commit of results and the change feed, and it is
the only doorway to them: the gRPC services (`service.py`), the scheduler, the lease clock, the
parallelism bound, the metrics, the server and the sequential fallback (`paradecom run --runners 0`)
call its methods and never reach the parts behind it. It answers in protobuf messages and never
calls an LLM: `generate_work_queue` queues a project's top-level tasks and `process_results` files
what runners found (the RFC's names).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from paradecom import limits
from paradecom.errors import ProjectFileError
from paradecom.project import ProjectDefinition, top_level_tasks
from paradecom.runner.prompt import RequestSettings, build_request
from paradecom.v1 import project_pb2, task_pb2

from .consolidate import build_tree, task_node
from .group_commit import ResultGroups
from .lifecycle import STATUS, Accepted, LeaseConfig, Result, TaskLifecycle
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
    ProjectStats,
    Store,
    TaskRow,
    clamp_int,
)

PROJECT_STATE = {
    RUNNING: project_pb2.PROJECT_STATE_RUNNING,
    P_DONE: project_pb2.PROJECT_STATE_DONE,
    P_CANCELLED: project_pb2.PROJECT_STATE_CANCELLED,
    P_FAILED: project_pb2.PROJECT_STATE_FAILED,
}


# The fields of LlmUsage: a stored usage object may also hold names an older leader wrote.
_USAGE_FIELDS = tuple(project_pb2.LlmUsage.DESCRIPTOR.fields_by_name)


class ChangeFeed:
    """Wakes whoever waits on a project (WatchProject streams) or on any change (the dispatcher)."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.any_change = asyncio.Event()

    def notify(self, project_id: str) -> None:
        self.any_change.set()
        for event in self._watchers.get(project_id, ()):
            event.set()

    def watch(self, project_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers[project_id].add(event)
        return event

    def unwatch(self, project_id: str, event: asyncio.Event) -> None:
        self._watchers[project_id].discard(event)
        if not self._watchers[project_id]:
            del self._watchers[project_id]


class LeaseObserver(Protocol):
    """Told of the lease events the store keeps no count of (the metrics in leader/metrics.py)."""

    def granted(self, task_ids: Sequence[str]) -> None: ...

    def extended(self) -> None: ...

    def settled(self, task_id: str, *, accepted: bool) -> None: ...


class DecompositionLeader:
    """Projects in, leases out, results in, trees out; every change durable before it returns."""

    def __init__(
        self,
        store: Store,
        config: LeaseConfig | None = None,
        *,
        default_max_depth: int = limits.DEFAULT_MAX_DEPTH,
        clock: Callable[[], float] = time.time,
        observer: LeaseObserver | None = None,
        request_settings: RequestSettings | None = None,
    ) -> None:
        self._store = store
        # What shapes the LlmRequest of every assignment (fan-out, re-asks, answer profile).
        self.request_settings = request_settings or RequestSettings()
        self.observer = observer
        self.config = config or LeaseConfig()
        self.default_max_depth = default_max_depth
        self.clock = clock
        # The parts. Everything else in the leader (services, scheduler, lease clock, metrics)
        # goes through this class's methods, never to these: one doorway to the leader's state.
        self._feed = ChangeFeed()
        self._lifecycle = TaskLifecycle(store, self.config, clock=clock, on_change=self._feed.notify)
        self._result_groups = ResultGroups(self._lifecycle)
        # Definitions never change after submission; parsing them once per project, not per lease.
        self._definitions: dict[str, project_pb2.ProjectDefinition] = {}
        self._contexts: dict[str, project_pb2.ProjectDefinition] = {}

    # Projects.

    def generate_work_queue(self, project: ProjectDefinition | project_pb2.ProjectDefinition) -> str:
        """Store a project and queue its top-level tasks: the seed tasks, or one root task made
        from the project itself. Raises ProjectFileError for an invalid definition."""
        definition = project if isinstance(project, ProjectDefinition) else ProjectDefinition.from_proto(project)
        definition.validate(source="project")
        msg = definition.to_proto()
        msg.max_depth = definition.max_depth or self.default_max_depth
        size = msg.ByteSize()
        if size > limits.MAX_DEFINITION_BYTES:
            # Within every other limit a project's seeds can still fill a message; one this size
            # keeps the first page of its tree (definition included) within a message.
            raise ProjectFileError(
                f"project: {size:,} bytes serialized, more than the limit of {limits.MAX_DEFINITION_BYTES:,}"
                " (32 MiB: fewer or shorter seed tasks)"
            )
        project_id = uuid.uuid4().hex[:16]
        now_ms = int(self.clock() * 1000)
        seeds = top_level_tasks(msg)
        rows = [
            TaskRow(
                id=0,
                project_id=project_id,
                parent_id=None,
                path=str(i),
                position=i,
                depth=0,
                key=str(i),
                title=s.title,
                description=s.description,
                acceptance_criteria=list(s.acceptance_criteria),
                depends_on=[],
                atomic=False,
                atomic_reason="",
                estimate_hours=0.0,
                state=QUEUED,
            )
            for i, s in enumerate(seeds, start=1)
        ]
        with self._store.transaction():
            self._store.insert_project(
                ProjectRow(
                    id=project_id,
                    seq=self._store.next_project_seq(),
                    name=msg.name,
                    definition=msg.SerializeToString(),
                    max_depth=msg.max_depth,
                    state=RUNNING,
                    error="",
                    created_ms=now_ms,
                    finished_ms=0,
                    counts={QUEUED: len(rows)},
                    max_tasks=msg.max_tasks,
                    max_tokens=msg.max_tokens,
                )
            )
            self._store.insert_tasks(rows)
        self._feed.notify(project_id)
        return project_id

    def definition(self, project_id: str) -> project_pb2.ProjectDefinition:
        if project_id not in self._definitions:
            row = self._store.get_project(project_id)
            assert row is not None
            self._definitions[project_id] = project_pb2.ProjectDefinition.FromString(row.definition)
        return self._definitions[project_id]

    def _context(self, project_id: str) -> project_pb2.ProjectDefinition:
        """The definition as runners get it: without the seed tasks, which every assignment would
        otherwise carry (kilobytes per seed) though a task's own context is all a runner needs."""
        if project_id not in self._contexts:
            context = project_pb2.ProjectDefinition()
            context.CopyFrom(self.definition(project_id))
            del context.tasks[:]
            self._contexts[project_id] = context
        return self._contexts[project_id]

    def summary(self, project_id: str) -> project_pb2.ProjectSummary | None:
        row = self._store.get_project(project_id)
        return None if row is None else self._summary(row)

    def _summary(self, row: ProjectRow) -> project_pb2.ProjectSummary:
        # Every number clamped to its field's type: a store written by an older leader may hold
        # totals past them, and the project must stay readable (store.clamp_int).
        c = {state: clamp_int(n, limits.INT32_MAX) for state, n in row.counts.items()}
        return project_pb2.ProjectSummary(
            project_id=row.id,
            name=row.name,
            state=PROJECT_STATE.get(row.state, project_pb2.PROJECT_STATE_UNSPECIFIED),
            queued=c.get(QUEUED, 0),
            leased=c.get(LEASED, 0),
            done=c.get(DONE, 0),
            dead=c.get(DEAD, 0),
            cancelled=c.get(CANCELLED, 0),
            total=min(sum(c.values()), limits.INT32_MAX),
            created_at_unix_ms=clamp_int(row.created_ms, limits.INT64_MAX),
            finished_at_unix_ms=clamp_int(row.finished_ms, limits.INT64_MAX),
            error=row.error,
            max_depth=clamp_int(row.max_depth, limits.INT32_MAX),
            late_results_refused=clamp_int(row.late_results_refused, limits.INT32_MAX),
            leases_expired=clamp_int(row.leases_expired, limits.INT32_MAX),
            usage=project_pb2.LlmUsage(
                **{name: clamp_int(row.usage.get(name, 0), limits.INT64_MAX) for name in _USAGE_FIELDS}
            ),
        )

    def list_projects(
        self, page_size: int, before_seq: int | None
    ) -> tuple[list[project_pb2.ProjectSummary], int | None]:
        """A page of projects, newest first, and the seq to continue from (None on the last page)."""
        rows = self._store.list_projects(page_size + 1, before_seq)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return [self._summary(r) for r in rows], (rows[-1].seq if more and rows else None)

    def task_tree(self, project_id: str) -> list[project_pb2.TaskNode]:
        return build_tree(self._store.project_tasks(project_id), STATUS)

    def task_tree_page(
        self, project_id: str, after_id: int, page_size: int, max_bytes: int = limits.TREE_PAGE_BYTES
    ) -> tuple[list[project_pb2.TaskNode], int | None]:
        """The project's tasks created after task `after_id`, flat (no children) and oldest first,
        up to `page_size` of them and about `max_bytes` (at least one); and the task id to continue
        after, None when this page reaches the end."""
        nodes: list[project_pb2.TaskNode] = []
        size = 0
        siblings: dict[int | None, dict[str, str]] = {}
        last = after_id
        while len(nodes) < page_size:
            # A few rows at a time: at the limits a task is most of a megabyte.
            rows = self._store.project_tasks_after(project_id, last, min(64, page_size - len(nodes)))
            if not rows:
                return nodes, None
            for t in rows:
                depends_on: list[str] = []
                if t.depends_on:
                    if t.parent_id not in siblings:
                        siblings[t.parent_id] = self._store.children_paths(project_id, t.parent_id)
                    by_key = siblings[t.parent_id]
                    depends_on = [by_key[k] for k in t.depends_on if k in by_key and k != t.key]
                node = task_node(t, depends_on, STATUS)
                # 6: the field's tag and length prefix in the response.
                node_size = node.ByteSize() + 6
                if nodes and size + node_size > max_bytes:
                    return nodes, last
                nodes.append(node)
                size += node_size
                last = t.id
        more = self._store.project_tasks_after(project_id, last, 1)
        return nodes, last if more else None

    def cancel_project(self, project_id: str) -> bool:
        return self._lifecycle.cancel_project(project_id)

    # Leases.

    def lease_tasks(self, runner_id: str, limit: int) -> list[task_pb2.TaskAssignment]:
        """Lease up to `limit` ready tasks to a runner, each with the context to decompose it."""
        assignments = [self._assignment(t) for t in self._lifecycle.grant(runner_id, limit)]
        if self.observer and assignments:
            self.observer.granted([a.lease.task_id for a in assignments])
        return assignments

    def _assignment(self, task: TaskRow) -> task_pb2.TaskAssignment:
        assert task.lease_token is not None and task.lease_expires_ms is not None
        ancestors: list[project_pb2.TaskSpec] = []
        parent_id = task.parent_id
        while parent_id is not None:
            parent = self._store.get_task(parent_id)
            assert parent is not None
            ancestors.append(
                project_pb2.TaskSpec(
                    title=parent.title,
                    description=parent.description,
                    acceptance_criteria=parent.acceptance_criteria,
                )
            )
            parent_id = parent.parent_id
        ancestors.reverse()
        siblings = self._store.children_titles(task.project_id, task.parent_id, limits.MAX_SIBLING_TITLES + 1)
        definition = self._context(task.project_id)
        assignment = task_pb2.TaskAssignment(
            lease=task_pb2.Lease(
                task_id=str(task.id),
                attempt=clamp_int(task.attempts, limits.INT32_MAX),
                token=task.lease_token,
                expires_at_unix_ms=task.lease_expires_ms,
                timeout_ms=int(self.config.lease_timeout_s * 1000),
            ),
            project_id=task.project_id,
            project=definition,
            task=project_pb2.TaskSpec(
                title=task.title, description=task.description, acceptance_criteria=task.acceptance_criteria
            ),
            ancestors=ancestors,
            sibling_titles=[title for sid, title in siblings if sid != task.id][: limits.MAX_SIBLING_TITLES],
            depth=task.depth,
            max_depth=definition.max_depth,
        )
        assignment.llm_request.CopyFrom(build_request(assignment, self.request_settings))
        return assignment

    def process_results(
        self,
        task_id: str,
        lease_token: str,
        subtasks: Sequence[task_pb2.Subtask],
        usage: task_pb2.Usage | None = None,
        stop_reason: str = "",
    ) -> Accepted:
        """File a task's subtasks under its lease; queue the children that need decomposing. No
        subtasks with a `stop_reason` makes the task a leaf for that reason. Raises the lease
        rules' refusal (a LeaseError) when the lease is not the task's current one.

        The RFC's name, for callers without an event loop to share (the sequential fallback, tests,
        benchmarks): `submit_result` in a transaction of its own, committed before it returns. The
        gRPC service calls `submit_result`; both take the same path to the lifecycle."""
        result = Result(task_id, lease_token, subtasks, usage or task_pb2.Usage(), stop_reason)
        return self._settled(result, self._result_groups.accept_alone(result))

    async def submit_result(
        self,
        task_id: str,
        lease_token: str,
        subtasks: Sequence[task_pb2.Subtask],
        usage: task_pb2.Usage | None = None,
        stop_reason: str = "",
    ) -> Accepted:
        """`process_results` as the service calls it: in one transaction with the results that
        arrive with it (group commit, leader/group_commit.py), returned once that transaction has
        committed."""
        result = Result(task_id, lease_token, subtasks, usage or task_pb2.Usage(), stop_reason)
        return self._settled(result, await self._result_groups.accept(result))

    def _settled(self, result: Result, accepted: Accepted) -> Accepted:
        """Tell the observer of an accepted result (a duplicate settles nothing new)."""
        if self.observer and not accepted.duplicate:
            self.observer.settled(result.task_id, accepted=True)
        return accepted

    def extend_lease(self, task_id: str, lease_token: str) -> tuple[int, bool]:
        expires_ms, cancelled = self._lifecycle.extend(task_id, lease_token)
        if self.observer and not cancelled:
            self.observer.extended()
        return expires_ms, cancelled

    def fail_task(
        self, task_id: str, lease_token: str, error: str, retryable: bool, usage: task_pb2.Usage | None = None
    ) -> project_pb2.TaskStatus.ValueType:
        state = self._lifecycle.fail(task_id, lease_token, error, retryable, usage or task_pb2.Usage())
        if self.observer:
            self.observer.settled(task_id, accepted=False)
        return STATUS[state]

    def release_task(self, task_id: str, lease_token: str, reason: str, usage: task_pb2.Usage | None = None) -> None:
        self._lifecycle.release(task_id, lease_token, reason, usage)
        if self.observer:
            self.observer.settled(task_id, accepted=False)

    # Runner sessions and the lease clock (leader/scheduler.py, leader/lease_clock.py, leader/server.py).

    def leases_by_runner(self) -> Mapping[str, int]:
        """How many live leases each runner holds (runners with none left out). A live, read-only
        view: it follows every grant and settlement, also while the caller holds it."""
        return self._lifecycle.leases_by_runner

    def end_session(self, runner_id: str) -> int:
        """The runner restarted under its id: end the leases it held now, as expired ones (charged,
        retried with backoff, their tokens refused from now on). Returns how many."""
        return self._lifecycle.end_session(runner_id)

    def shorten_leases(self, runner_id: str) -> int:
        """The runner's stream dropped: its leases end within the disconnect grace unless it keeps
        heartbeating them. Returns how many were shortened."""
        return self._lifecycle.shorten_leases(runner_id)

    def expire_due(self) -> int:
        """Requeue (or dead-letter) every task whose lease has passed its expiry; returns how many
        projects changed."""
        return self._lifecycle.expire_due()

    def renew_all_leases(self) -> int:
        """At start-up: give every lease handed out before a restart a full lease timeout from now
        (runners could not heartbeat while the leader was down). Returns how many."""
        return self._lifecycle.renew_all_leases()

    def next_backoff_seconds(self) -> float | None:
        """Seconds until the earliest task waiting out a retry backoff becomes ready; None if none waits."""
        return self._seconds_until(self._store.next_backoff_ms(int(self.clock() * 1000)))

    def next_lease_expiry_seconds(self) -> float | None:
        """Seconds until the earliest live lease expires (0 if one is past due); None with no lease."""
        return self._seconds_until(self._store.next_lease_expiry_ms())

    def _seconds_until(self, due_ms: int | None) -> float | None:
        return None if due_ms is None else max(0.0, due_ms / 1000 - self.clock())

    # Changes (WatchProject streams, the dispatcher).

    def watch(self, project_id: str) -> asyncio.Event:
        """An event set at every committed change of the project; the caller clears it after each
        wake and must `unwatch` it when done."""
        return self._feed.watch(project_id)

    def unwatch(self, project_id: str, event: asyncio.Event) -> None:
        self._feed.unwatch(project_id, event)

    def wake_dispatcher(self) -> None:
        """Make `wait_for_change` return: something other than a task changed (a runner connected
        or left, the LLM budget was changed)."""
        self._feed.any_change.set()

    async def wait_for_change(self, timeout_s: float) -> None:
        """Return at the next change of any project or `wake_dispatcher`, or after `timeout_s`.
        A change made since the previous return (while the caller worked) returns at once."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # lands as the event fires (CPython gh-86296), and the drain that cancels the caller would hang.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._feed.any_change.wait()
        self._feed.any_change.clear()

    # What the store knows of every project (leader/parallelism.py, leader/metrics.py, leader/server.py).

    def open_task_count(self) -> int:
        """Tasks queued (ready or in a retry backoff) or leased, over every running project."""
        total = 0
        for project_id in self._store.running_project_ids():
            row = self._store.get_project(project_id)
            if row is not None:
                total += row.counts.get(QUEUED, 0) + row.counts.get(LEASED, 0)
        return total

    def running_project_count(self) -> int:
        """Projects not yet done, failed or cancelled."""
        return len(self._store.running_project_ids())

    def project_stats(self) -> list[ProjectStats]:
        """Every project's counters, without definitions: what a metrics scrape reads."""
        return self._store.project_stats()

    def result_transactions(self) -> int:
        """Store transactions that accepted results since the leader started (group commit makes
        them fewer than the results)."""
        return self._result_groups.groups

    def close(self) -> None:
        """Close the store. The leader is not used afterwards."""
        self._store.close()
