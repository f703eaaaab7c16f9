"""The sequential fallback (`paradecom run --runners 0`): one process, one task at a time, no gRPC.

It drives the same `DecompositionLeader` (on an in-memory store) and the same
`DecompositionRunner.decompose_task` as the cluster, so the two differ only in parallelism; the
benchmarks compare them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from paradecom.errors import DecompositionError
from paradecom.leader.core import DecompositionLeader
from paradecom.leader.lifecycle import LeaseConfig
from paradecom.leader.store import SqliteStore
from paradecom.project import ProjectDefinition
from paradecom.runner.loop import DecompositionRunner
from paradecom.tree import TaskTree
from paradecom.v1 import project_pb2, project_service_pb2

RUNNER_ID = "sequential"


async def decompose_sequentially(
    project: ProjectDefinition,
    runner: DecompositionRunner,
    *,
    max_attempts: int = 3,
    on_progress: Callable[[project_pb2.ProjectSummary], None] | None = None,
) -> TaskTree:
    """Decompose `project` task by task in this process."""
    store = SqliteStore(":memory:")
    # No runner can vanish here, so leases need no timeout worth the name.
    leader = DecompositionLeader(store, LeaseConfig(lease_timeout_s=24 * 3600, max_attempts=max_attempts))
    try:
        project_id = leader.generate_work_queue(project)
        while True:
            summary = leader.summary(project_id)
            assert summary is not None
            if on_progress:
                on_progress(summary)
            if summary.state != project_pb2.PROJECT_STATE_RUNNING:
                break
            batch = leader.lease_tasks(RUNNER_ID, 1)
            if not batch:
                # Only tasks waiting out a retry backoff are left.
                wait = leader.seconds_until(store.next_backoff_ms(int(leader.clock() * 1000)))
                await asyncio.sleep(wait if wait is not None else 0.05)
                continue
            assignment = batch[0]
            lease = assignment.lease
            try:
                outcome = await runner.decompose_task(assignment)
            except DecompositionError as exc:
                leader.fail_task(lease.task_id, lease.token, str(exc), exc.retryable, getattr(exc, "usage", None))
                continue
            leader.process_results(lease.task_id, lease.token, outcome.subtasks, outcome.usage, outcome.stop_reason)
        return TaskTree.from_proto(
            project_service_pb2.GetTaskTreeResponse(
                project=summary, definition=leader.definition(project_id), tasks=leader.task_tree(project_id)
            )
        )
    finally:
        store.close()
        await runner.close()
