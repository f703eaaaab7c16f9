"""The sequential fallback (`paradecom run --runners 0`): one process, one task at a time, no gRPC.

It drives the same `DecompositionLeader` (on an in-memory store) and the same `Decomposer` as the
runners, built from the same settings, so the two modes send the same LLM requests and differ only
in parallelism; the benchmarks compare them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from paradecom.errors import RunInterrupted
from paradecom.leader.core import DecompositionLeader
from paradecom.leader.lifecycle import LeaseConfig
from paradecom.leader.store import SqliteStore
from paradecom.project import ProjectDefinition
from paradecom.runner.decompose import Decomposer, DecompositionFailed
from paradecom.tree import TaskTree
from paradecom.v1 import project_pb2, project_service_pb2

RUNNER_ID = "sequential"
# No runner can vanish here, so leases need no timeout worth the name.
LEASE_TIMEOUT_S = 24 * 3600.0


def leader_tree(leader: DecompositionLeader, project_id: str) -> TaskTree:
    """The project's tree as the leader holds it now (finished or not)."""
    summary = leader.summary(project_id)
    assert summary is not None
    return TaskTree.from_proto(
        project_service_pb2.GetTaskTreeResponse(
            project=summary, definition=leader.definition(project_id), tasks=leader.task_tree(project_id)
        )
    )


async def decompose_sequentially(
    project: ProjectDefinition,
    decomposer: Decomposer,
    *,
    max_attempts: int,
    on_progress: Callable[[project_pb2.ProjectSummary], None] | None = None,
) -> TaskTree:
    """Decompose `project` task by task in this process. Cancelled, it raises RunInterrupted with
    the tree as far as it got."""
    store = SqliteStore(":memory:")
    leader = DecompositionLeader(
        store,
        LeaseConfig(lease_timeout_s=LEASE_TIMEOUT_S, max_attempts=max_attempts),
        request_settings=decomposer.settings.request,
    )
    project_id = ""
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
                wait = leader.next_backoff_seconds()
                await asyncio.sleep(wait if wait is not None else 0.05)
                continue
            lease = batch[0].lease
            try:
                outcome = await decomposer.decompose(batch[0])
            except DecompositionFailed as exc:
                leader.fail_task(lease.task_id, lease.token, str(exc), exc.retryable, exc.usage)
                continue
            leader.process_results(lease.task_id, lease.token, outcome.subtasks, outcome.usage, outcome.stop_reason)
        return leader_tree(leader, project_id)
    except asyncio.CancelledError:
        if not project_id:
            raise
        raise RunInterrupted(leader_tree(leader, project_id)) from None
    finally:
        store.close()
