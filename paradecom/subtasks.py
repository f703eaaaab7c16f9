"""Structural rules for the children of one task, shared by the runner (before it submits) and the
leader (before it accepts): a runner in another language is held to the same rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from paradecom import limits


@dataclass(frozen=True)
class SubtaskShape:
    """The parts of a subtask the structural rules look at."""

    key: str
    title: str
    depends_on: Sequence[str]


def subtask_errors(children: Sequence[SubtaskShape], *, parent_title: str = "") -> list[str]:
    """Every rule the children break, as human-readable lines; empty when they are valid.

    Rules: 1 to MAX_SUBTASKS children; keys non-empty, short and unique; titles non-empty, short,
    unique among siblings and not the parent's own title; depends_on names sibling keys only, never
    the child itself, and the dependencies have no cycle.
    """
    errors: list[str] = []
    if not children:
        return ["no subtasks"]
    if len(children) > limits.MAX_SUBTASKS:
        errors.append(f"{len(children)} subtasks, more than the limit of {limits.MAX_SUBTASKS}")
    keys: set[str] = set()
    titles: set[str] = set()
    for i, child in enumerate(children, start=1):
        where = f"subtask {i}"
        if not child.key.strip():
            errors.append(f"{where}: empty key")
        elif len(child.key) > limits.MAX_KEY_CHARS:
            errors.append(f"{where}: key longer than {limits.MAX_KEY_CHARS} characters")
        elif child.key in keys:
            errors.append(f"{where}: duplicate key {child.key!r}")
        keys.add(child.key)
        title = child.title.strip()
        if not title:
            errors.append(f"{where}: empty title")
        elif len(title) > limits.MAX_TITLE_CHARS:
            errors.append(f"{where}: title longer than {limits.MAX_TITLE_CHARS} characters")
        elif title.casefold() in titles:
            errors.append(f"{where}: duplicate title {title!r}")
        elif parent_title and title.casefold() == parent_title.strip().casefold():
            errors.append(f"{where}: repeats its parent's title")
        titles.add(title.casefold())
    for i, child in enumerate(children, start=1):
        for dep in child.depends_on:
            if dep == child.key:
                errors.append(f"subtask {i}: depends on itself")
            elif dep not in keys:
                errors.append(f"subtask {i}: depends on {dep!r}, which is not a sibling key")
    cycle = find_cycle({c.key: [d for d in c.depends_on if d in keys and d != c.key] for c in children})
    if cycle:
        errors.append("dependency cycle: " + " -> ".join(cycle))
    return errors


def find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """A cycle in `graph` (node -> nodes it depends on) as a path ending where it starts; [] if none."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack_path: list[str] = []

    def visit(node: str) -> list[str]:
        color[node] = grey
        stack_path.append(node)
        for nxt in graph.get(node, []):
            if color.get(nxt, black) == grey:
                return [*stack_path[stack_path.index(nxt) :], nxt]
            if color.get(nxt) == white:
                found = visit(nxt)
                if found:
                    return found
        stack_path.pop()
        color[node] = black
        return []

    for node in graph:
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return []
