"""Consolidation: the project's stored tasks become the tree a client reads.

Ids are the hierarchical paths given at insertion ("1.2.3": positions from the top-level task
down); each child's `depends_on` sibling keys are resolved to those ids; a dependency cycle, a
dangling dependency or a task twice in the tree is refused, and the project then ends FAILED with
the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from paradecom.limits import INT32_MAX
from paradecom.subtasks import find_cycle
from paradecom.v1 import project_pb2

from .store import TaskRow, clamp_int


def _siblings(tasks: Sequence[TaskRow]) -> dict[tuple[str, int | None], list[TaskRow]]:
    groups: dict[tuple[str, int | None], list[TaskRow]] = defaultdict(list)
    for t in tasks:
        groups[(t.project_id, t.parent_id)].append(t)
    return groups


def resolved_dependencies(tasks: Sequence[TaskRow]) -> dict[int, list[str]]:
    """Each task's depends_on as tree ids (only keys that name a sibling survive)."""
    resolved: dict[int, list[str]] = {}
    for group in _siblings(tasks).values():
        by_key = {t.key: t.path for t in group}
        for t in group:
            resolved[t.id] = [by_key[k] for k in t.depends_on if k in by_key and k != t.key]
    return resolved


def consolidation_error(tasks: Sequence[TaskRow]) -> str:
    """Why the tree cannot be consolidated, or "" when it is sound."""
    seen: set[str] = set()
    for t in tasks:
        if t.path in seen:
            return f"task {t.path} appears twice"
        seen.add(t.path)
    for group in _siblings(tasks).values():
        keys = {t.key for t in group}
        for t in group:
            missing = [k for k in t.depends_on if k not in keys]
            if missing:
                return f"task {t.path} depends on {missing[0]!r}, which is not a sibling"
        by_key = {t.key: t.path for t in group}
        cycle = find_cycle({t.key: list(t.depends_on) for t in group})
        if cycle:
            return "dependency cycle: " + " -> ".join(by_key[k] for k in cycle)
    return ""


def task_node(
    t: TaskRow, depends_on: list[str], status: dict[str, project_pb2.TaskStatus.ValueType]
) -> project_pb2.TaskNode:
    """One task as the tree shows it, without its children. The parent's id is the task's own
    path without its last step; numbers are clamped to their fields (a store written by an older
    leader may hold anything)."""
    return project_pb2.TaskNode(
        id=t.path,
        parent_id=t.path.rpartition(".")[0] if t.parent_id is not None else "",
        depth=clamp_int(t.depth, INT32_MAX),
        title=t.title,
        description=t.description,
        acceptance_criteria=t.acceptance_criteria,
        depends_on=depends_on,
        atomic=t.atomic,
        atomic_reason=t.atomic_reason,
        estimate_hours=t.estimate_hours if isinstance(t.estimate_hours, float) else 0.0,
        status=status.get(t.state, project_pb2.TASK_STATUS_UNSPECIFIED),
        attempts=clamp_int(t.attempts, INT32_MAX),
        last_error=t.last_error,
        stop_reason=t.stop_reason,
    )


def build_tree(
    tasks: Sequence[TaskRow], status: dict[str, project_pb2.TaskStatus.ValueType]
) -> list[project_pb2.TaskNode]:
    """The top-level TaskNodes, each with its subtree, children in position order."""
    deps = resolved_dependencies(tasks)
    nodes: dict[int, project_pb2.TaskNode] = {}
    children: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t in tasks:
        nodes[t.id] = task_node(t, deps.get(t.id, []), status)
        if t.parent_id is not None:
            children[t.parent_id].append((t.position, t.id))
    # Attach bottom-up: a protobuf repeated field copies on append, so a node's children must be
    # complete before it is appended to its parent.
    for t in sorted(tasks, key=lambda t: -t.depth):
        for _, child_id in sorted(children.get(t.id, [])):
            nodes[t.id].children.append(nodes[child_id])
    roots = sorted((t for t in tasks if t.parent_id is None), key=lambda t: t.position)
    return [nodes[t.id] for t in roots]
