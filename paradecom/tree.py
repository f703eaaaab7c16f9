"""The result of a decomposition: a project's task tree, as JSON, Markdown, Mermaid or CSV.

`TaskTree.from_proto` reads the leader's GetTaskTreeResponse; `to_dict`/`from_dict` give the
stable JSON shape documented in docs/tree-format.md, so a saved tree can be read back without the
leader. `to_mermaid` draws the tree and its dependencies as a flowchart; `to_csv` gives one row per
task for an issue tracker's CSV import.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from paradecom.v1 import project_pb2, project_service_pb2

FORMATS = ("json", "markdown", "mermaid", "csv")

_TASK_STATUS_PREFIX = "TASK_STATUS_"
_PROJECT_STATE_PREFIX = "PROJECT_STATE_"
_COUNT_KEYS = ("total", "done", "dead", "queued", "leased", "cancelled")
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "calls", "reasks", "failures", "rate_limited", "cache_hits")
CSV_COLUMNS = (
    "id",
    "title",
    "description",
    "parent",
    "depends_on",
    "estimate_hours",
    "labels",
    "acceptance_criteria",
)


@dataclass
class TreeTask:
    """One task of the tree, with its subtasks in order.

    `status` is "done", "dead", "queued", "leased" or "cancelled"; "done" means decomposed (or a
    leaf that needed no decomposition), not that the work itself is done.
    """

    id: str
    parent_id: str | None
    depth: int
    title: str
    description: str = ""
    acceptance_criteria: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    atomic: bool = False
    atomic_reason: str = ""
    estimate_hours: float = 0.0
    status: str = "queued"
    attempts: int = 0
    last_error: str = ""
    stop_reason: str = ""
    children: list[TreeTask] = field(default_factory=list)

    @classmethod
    def from_proto(cls, node: project_pb2.TaskNode) -> TreeTask:
        """Convert one TaskNode and its whole subtree."""
        return cls(
            id=node.id,
            parent_id=node.parent_id or None,
            depth=node.depth,
            title=node.title,
            description=node.description,
            acceptance_criteria=list(node.acceptance_criteria),
            depends_on=list(node.depends_on),
            atomic=node.atomic,
            atomic_reason=node.atomic_reason,
            estimate_hours=node.estimate_hours,
            status=_enum_name(project_pb2.TaskStatus, node.status, _TASK_STATUS_PREFIX),
            attempts=node.attempts,
            last_error=node.last_error,
            stop_reason=node.stop_reason,
            children=[cls.from_proto(child) for child in node.children],
        )

    def to_dict(self) -> dict[str, Any]:
        """This task and its subtree in the JSON shape of docs/tree-format.md."""
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "depth": self.depth,
            "title": self.title,
            "description": self.description,
            "acceptance_criteria": list(self.acceptance_criteria),
            "depends_on": list(self.depends_on),
            "atomic": self.atomic,
            "atomic_reason": self.atomic_reason,
            "estimate_hours": self.estimate_hours,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "stop_reason": self.stop_reason,
            "children": [child.to_dict() for child in self.children],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TreeTask:
        """The inverse of to_dict; keys other than id, depth and title may be left out."""
        try:
            return cls(
                id=str(d["id"]),
                parent_id=d.get("parent_id"),
                depth=int(d["depth"]),
                title=str(d["title"]),
                description=str(d.get("description", "")),
                acceptance_criteria=[str(c) for c in d.get("acceptance_criteria", [])],
                depends_on=[str(x) for x in d.get("depends_on", [])],
                atomic=bool(d.get("atomic", False)),
                atomic_reason=str(d.get("atomic_reason", "")),
                estimate_hours=float(d.get("estimate_hours", 0.0)),
                status=str(d.get("status", "queued")),
                attempts=int(d.get("attempts", 0)),
                last_error=str(d.get("last_error", "")),
                stop_reason=str(d.get("stop_reason", "")),
                children=[cls.from_dict(child) for child in d.get("children", [])],
            )
        except KeyError as e:
            raise ValueError(f"task {d.get('id', '?')!s}: missing key {e.args[0]!r}") from None

    def iter_tasks(self) -> Iterator[TreeTask]:
        """This task, then its descendants, depth first in order."""
        yield self
        for child in self.children:
            yield from child.iter_tasks()


@dataclass
class TaskTree:
    """A project and its top-level tasks (the root task, or the seed tasks), each with its subtree.

    `project` holds id, name, description, goals, constraints, max_depth, state ("running",
    "done", "cancelled" or "failed"), error (why it failed, else ""), counts (total, done, dead,
    queued, leased, cancelled), late_results_refused, leases_expired and usage (LLM prompt_tokens,
    completion_tokens, calls, reasks, failures, rate_limited, cache_hits).
    """

    project: dict[str, Any]
    tasks: list[TreeTask] = field(default_factory=list)

    @classmethod
    def from_proto(cls, resp: project_service_pb2.GetTaskTreeResponse) -> TaskTree:
        """Convert the leader's answer to GetTaskTree."""
        summary, definition = resp.project, resp.definition
        project: dict[str, Any] = {
            "id": summary.project_id,
            "name": definition.name or summary.name,
            "description": definition.description,
            "goals": list(definition.goals),
            "constraints": list(definition.constraints),
            # The summary holds the limit in force; the definition's may be 0 ("leader's default").
            "max_depth": summary.max_depth or definition.max_depth,
            "state": _enum_name(project_pb2.ProjectState, summary.state, _PROJECT_STATE_PREFIX),
            "error": summary.error,
            "counts": {key: getattr(summary, key) for key in _COUNT_KEYS},
            "late_results_refused": summary.late_results_refused,
            "leases_expired": summary.leases_expired,
            "usage": {key: getattr(summary.usage, key) for key in _USAGE_KEYS},
        }
        return cls(project=project, tasks=[TreeTask.from_proto(node) for node in resp.tasks])

    def to_dict(self) -> dict[str, Any]:
        """The tree in the JSON shape of docs/tree-format.md; the result shares nothing with self."""
        return {"project": copy.deepcopy(self.project), "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskTree:
        """The inverse of to_dict: `TaskTree.from_dict(tree.to_dict()) == tree`."""
        if "project" not in d or not isinstance(d["project"], Mapping):
            raise ValueError("tree: expected a 'project' mapping")
        return cls(
            project=copy.deepcopy(dict(d["project"])),
            tasks=[TreeTask.from_dict(t) for t in d.get("tasks", [])],
        )

    def to_json(self, indent: int | None = 2) -> str:
        """to_dict() as JSON text, without a trailing newline; non-ASCII text is kept as it is."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_markdown(self) -> str:
        """A readable checklist: project heading, counts, then every task nested under its parent.

        The boxes are unchecked because a task's "done" means decomposed: the work is still to do.
        """
        p = self.project
        counts: Mapping[str, Any] = p.get("counts", {})
        lines = [f"# {_line(str(p.get('name', '')))}", ""]
        summary = (
            f"{p.get('state', '')} · {counts.get('total', 0)} tasks: "
            + ", ".join(f"{counts.get(k, 0)} {k}" for k in _COUNT_KEYS[1:])
            + f" · max depth {p.get('max_depth', 0)}"
        )
        lines.append(summary)
        leaves = [t for t in self.iter_tasks() if not t.children]
        estimate = sum(t.estimate_hours for t in leaves)
        if estimate > 0:
            lines += ["", f"Estimated effort: {_hours(estimate)} over {len(leaves)} leaf tasks."]
        usage: Mapping[str, Any] = p.get("usage") or {}
        if usage.get("calls") or usage.get("cache_hits"):
            lines += [
                "",
                f"LLM: {usage.get('calls', 0)} calls ({usage.get('reasks', 0)} re-asks, {usage.get('failures', 0)} "
                f"failed attempts, {usage.get('rate_limited', 0)} rate-limited, {usage.get('cache_hits', 0)} from "
                f"cache), {usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion "
                "tokens.",
            ]
        run: Mapping[str, Any] = p.get("run") or {}
        if run:
            lines += [
                "",
                f"Run: runners {_line(str(run.get('runners', '')))} ({_line(str(run.get('mode', '')))}), at most "
                f"{run.get('peak_concurrency', 0)} decompositions at once, {run.get('mean_concurrency', 0)} on "
                f"average, {run.get('wall_s', 0)} s.",
            ]
        if p.get("error"):
            lines += ["", f"**Failed:** {_line(str(p['error']))}"]
        description = str(p.get("description", "")).strip()
        if description:
            lines += ["", description]
        for heading, key in (("Goals", "goals"), ("Constraints", "constraints")):
            items = p.get(key) or []
            if items:
                lines += ["", f"## {heading}", ""]
                lines += [f"- {_line(str(item))}" for item in items]
        lines += ["", "## Tasks", ""]
        for task in self.tasks:
            _task_markdown(task, 0, lines)
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart, renderable as it is (GitHub, GitLab, mermaid.live): one node per
        task, a solid arrow from each task to each of its subtasks, and a dashed arrow from each
        task to the tasks that depend on it (`A -.-> B`: A must be finished before B).

        Node ids are `t` and the task id with dots as underscores (`t1_2_3`); labels are the task
        id, title and estimate, whitespace collapsed and Mermaid's special characters written as
        entity codes. Atomic tasks and dead tasks are styled (classes `atomic` and `dead`).
        """
        lines = ["---", f"title: {_yaml_quoted(_line(str(self.project.get('name', ''))))}", "---", "flowchart TD"]
        node_ids: dict[str, str] = {}
        taken: set[str] = set()
        for task in self.iter_tasks():
            node_ids[task.id] = _mermaid_id(task.id, taken)
            taken.add(node_ids[task.id])
        for task in self.iter_tasks():
            label = f"{task.id} {_line(task.title)}"
            if task.estimate_hours > 0:
                label += f" ({_hours(task.estimate_hours)})"
            if task.status != "done":
                label += f" ({task.status})"
            lines.append(f'    {node_ids[task.id]}["{_mermaid_text(label)}"]')
        for task in self.iter_tasks():
            lines += [f"    {node_ids[task.id]} --> {node_ids[child.id]}" for child in task.children]
        for task in self.iter_tasks():
            # A dependency on an id not in the tree (a partial tree) would draw a bare node: leave it out.
            lines += [f"    {node_ids[dep]} -.-> {node_ids[task.id]}" for dep in task.depends_on if dep in node_ids]
        atomic = [node_ids[t.id] for t in self.iter_tasks() if t.atomic and t.status != "dead"]
        dead = [node_ids[t.id] for t in self.iter_tasks() if t.status == "dead"]
        lines += [
            "    classDef atomic fill:#e8f5e9,stroke:#2e7d32",
            "    classDef dead fill:#ffebee,stroke:#c62828,stroke-dasharray: 5 5",
        ]
        if atomic:
            lines.append(f"    class {','.join(atomic)} atomic")
        if dead:
            lines.append(f"    class {','.join(dead)} dead")
        return "\n".join(lines)

    def to_csv(self) -> str:
        """One row per task (depth first, each task before its subtasks) under a header row, for an
        issue tracker's CSV import; without a trailing newline.

        Columns (CSV_COLUMNS): id, title, description, parent (the parent's id, empty for a
        top-level task), depends_on (ids joined by ";"), estimate_hours (empty when unknown),
        labels (joined by ";": `depth-N`, then `atomic`, the status when it is not `done` such as
        `dead`, and `stop:<reason>` with the stop reason in lower-case words joined by "-"), and
        acceptance_criteria (one per line). Descriptions and criteria keep their line breaks; the
        csv module quotes them. Values are written as they are: a spreadsheet may read a cell that
        starts with "=" as a formula.
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for task in self.iter_tasks():
            labels = [f"depth-{task.depth}"]
            if task.atomic:
                labels.append("atomic")
            if task.status != "done":
                labels.append(task.status)
            if task.stop_reason:
                labels.append(f"stop:{_slug(task.stop_reason)}")
            writer.writerow(
                [
                    task.id,
                    _line(task.title),
                    task.description.strip(),
                    task.parent_id or "",
                    ";".join(task.depends_on),
                    f"{task.estimate_hours:g}" if task.estimate_hours > 0 else "",
                    ";".join(labels),
                    "\n".join(_line(c) for c in task.acceptance_criteria),
                ]
            )
        return out.getvalue().removesuffix("\n")

    def render(self, fmt: str) -> str:
        """The tree in one of FORMATS ("json", "markdown", "mermaid", "csv"); ValueError for any other."""
        renderers = {"json": self.to_json, "markdown": self.to_markdown, "mermaid": self.to_mermaid, "csv": self.to_csv}
        if fmt not in renderers:
            raise ValueError(f"unknown tree format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return renderers[fmt]()

    def iter_tasks(self) -> Iterator[TreeTask]:
        """Every task of the tree, depth first: each task before its children, siblings in order."""
        for task in self.tasks:
            yield from task.iter_tasks()


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    # A leader newer than this client may send a value unknown here; show it rather than fail.
    try:
        name: str = enum.Name(value)
    except ValueError:
        return f"unknown({value})"
    return name.removeprefix(prefix).lower()


def _task_markdown(task: TreeTask, level: int, lines: list[str]) -> None:
    pad = "  " * level
    inner = pad + "  "
    head = f"{pad}- [ ] {task.id} {_line(task.title)}"
    if task.estimate_hours > 0:
        head += f" ({_hours(task.estimate_hours)})"
    if task.status == "dead":
        head += " **DEAD**"
    elif task.status != "done":
        head += f" _({task.status})_"
    lines.append(head)
    description = task.description.strip()
    if description:
        # A quote, not plain text: plain lines would run on into the title's paragraph when rendered.
        lines += [f"{inner}> {row}".rstrip() for row in description.splitlines()]
    if task.depends_on:
        lines.append(f"{inner}- depends on: {', '.join(task.depends_on)}")
    if task.status == "dead":
        attempts = f" after {task.attempts} attempt{'s' if task.attempts != 1 else ''}"
        lines.append(f"{inner}- dead{attempts}: {_line(task.last_error) or 'no error recorded'}")
    for criterion in task.acceptance_criteria:
        lines.append(f"{inner}- {_line(criterion)}")
    for child in task.children:
        _task_markdown(child, level + 1, lines)


def _hours(hours: float) -> str:
    return f"{hours:g} h"


def _line(text: str) -> str:
    # Titles, criteria and errors come from an LLM or a runner; a newline would break the list.
    return " ".join(text.split())


# Mermaid reads "#name;" / "#NN;" in a label as an entity (decimal code point); every character that
# could end the label, open a shape or edge label, or be taken as HTML is written that way.
_MERMAID_ESCAPES = str.maketrans({c: f"#{ord(c)};" for c in '"#&<>[]{}|`'})


def _mermaid_text(text: str) -> str:
    return text.translate(_MERMAID_ESCAPES)


def _mermaid_id(task_id: str, taken: set[str]) -> str:
    # Letters, digits and "_" only, starting with "t": never a keyword ("end") nor an edge
    # marker ("o", "x" right after "--"). Ids from a hand-edited tree may collide once cleaned.
    base = "t" + re.sub(r"[^0-9A-Za-z_]", "_", task_id)
    node_id, n = base, 1
    while node_id in taken:
        n += 1
        node_id = f"{base}_{n}"
    return node_id


def _yaml_quoted(text: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar (Mermaid's front matter is YAML).
    return json.dumps(text)


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[0-9a-z]+", text.lower()))
