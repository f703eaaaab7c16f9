"""The head start of a local run: the first LLM calls go out before the leader is up.

`paradecom run` starts a leader and runners in one process. A project's first requests (one for
each top-level task) depend only on the project and the request settings, so the run sends them
as soon as the LLM client exists, and starts the leader, the gRPC server and the runners while
they are on the wire. When the leader then leases a top-level task, the runner finds the call for
exactly that request already made (Decomposer.start_early) and waits for it instead of making it
again. A call whose request the leader does not send (it never does if these functions agree
with the leader's, which tests/test_head_start.py checks) is cancelled when the run ends.

Nothing here decides anything: the leader still leases every task, counts every call in its
budget and accepts or refuses every result (docs/architecture.md, "Local runs").
"""

from __future__ import annotations

from paradecom import limits
from paradecom.project import top_level_tasks
from paradecom.v1 import project_pb2, task_pb2

from .prompt import RequestSettings, build_request


def top_level_requests(
    definition: project_pb2.ProjectDefinition, default_max_depth: int, settings: RequestSettings, count: int
) -> list[task_pb2.LlmRequest]:
    """The LlmRequests a leader with `default_max_depth` and `settings` sends for the first `count`
    top-level tasks of `definition`, built as the leader builds a depth-0 task's assignment."""
    context = project_pb2.ProjectDefinition()
    context.CopyFrom(definition)
    del context.tasks[:]
    context.max_depth = definition.max_depth or default_max_depth
    tasks = top_level_tasks(definition)
    # The leader's rule: the first MAX_SIBLING_TITLES + 1 titles by position, without the task's own.
    listed = [t.title for t in tasks[: limits.MAX_SIBLING_TITLES + 1]]
    requests = []
    for i, task in enumerate(tasks[: max(0, count)]):
        siblings = [title for j, title in enumerate(listed) if j != i][: limits.MAX_SIBLING_TITLES]
        assignment = task_pb2.TaskAssignment(
            project=context, task=task, sibling_titles=siblings, depth=0, max_depth=context.max_depth
        )
        requests.append(build_request(assignment, settings))
    return requests
