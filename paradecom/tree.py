"""The result of a decomposition: a project's task tree, as JSON, Markdown, Mermaid or CSV.

`TaskTree.from_proto` reads the leader's GetTaskTreeResponse; `to_dict`/`from_dict` give the
stable JSON shape documented in docs/tree-format.md, so a saved tree can be read back without the
leader. `to_mermaid` draws the tree and its dependencies as a flowchart; `to_csv` gives one row per
task for an issue tracker's CSV import.
"""

from __future__ import annotations

import copy
import csv
import html
import io
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from paradecom.textsafe import json_safe, terminal_safe
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
        """to_dict() as JSON text, without a trailing newline. Printable non-ASCII text is kept as it
        is; non-printable characters (controls, bidi overrides, ...) are written as \\uXXXX escapes,
        so the document is the exact tree and still safe to print on a terminal."""
        return json_safe(json.dumps(self.to_dict(), indent=indent, ensure_ascii=False))

    def to_markdown(self) -> str:
        """A readable checklist: project heading, counts, then every task nested under its parent.

        The boxes are unchecked because a task's "done" means decomposed: the work is still to do.
        Every piece of text from the project or the LLM is escaped (`_md_text`, the rules in
        docs/tree-format.md), so a Markdown parser reads back exactly the tree's tasks and text,
        whatever they hold.
        """
        p = self.project
        counts: Mapping[str, Any] = p.get("counts", {})
        lines = [f"# {_md_text(str(p.get('name', '')))}".rstrip(), ""]
        summary = (
            f"{_md_text(str(p.get('state', '')))} · {counts.get('total', 0)} tasks: "
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
                f"Run: runners {_md_text(str(run.get('runners', '')))} ({_md_text(str(run.get('mode', '')))}), at "
                f"most {run.get('peak_concurrency', 0)} decompositions at once, {run.get('mean_concurrency', 0)} on "
                f"average, {run.get('wall_s', 0)} s.",
            ]
        if p.get("error"):
            lines += ["", f"**Failed:** {_md_text(str(p['error']))}"]
        description = str(p.get("description", ""))
        if description:
            # A quote, so that no description can pass for one of the summary lines above.
            lines += ["", "> " + _md_text(description, break_prefix="> ")]
        for heading, key in (("Goals", "goals"), ("Constraints", "constraints")):
            items = p.get(key) or []
            if items:
                lines += ["", f"## {heading}", ""]
                lines += [f"- {_md_item(str(item))}" for item in items]
        lines += ["", "## Tasks", ""]
        for task in self.tasks:
            _task_markdown(task, 0, lines)
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart, renderable as it is (GitHub, GitLab, mermaid.live): one node per
        task, a solid arrow from each task to each of its subtasks, and a dashed arrow from each
        task to the tasks that depend on it (`A -.-> B`: A must be finished before B).

        Node ids are `t` and the task id with dots as underscores (`t1_2_3`); labels are the task
        id, title, estimate and (unless done) status. In a title, every character other than a
        letter, a digit, a mark, `.,-_'!?/` and an inner space is written as Mermaid's entity code
        (`#59;` for ";"), so Mermaid reads back exactly the title. The project's name is the
        diagram's title: HTML-escaped, its non-printable characters written as Python escapes
        (docs/tree-format.md). Atomic tasks and dead tasks are styled (classes `atomic` and `dead`).
        """
        name = html.escape(terminal_safe(str(self.project.get("name", ""))), quote=False)
        lines = ["---", f"title: {_yaml_quoted(name)}", "---", "flowchart TD"]
        node_ids: dict[str, str] = {}
        taken: set[str] = set()
        for task in self.iter_tasks():
            node_ids[task.id] = _mermaid_id(task.id, taken)
            taken.add(node_ids[task.id])
        for task in self.iter_tasks():
            label = f"{_mermaid_text(task.id)} {_mermaid_text(task.title)}"
            if task.estimate_hours > 0:
                label += f" ({_hours(task.estimate_hours)})"
            if task.status != "done":
                label += f" ({_mermaid_text(task.status)})"
            lines.append(f'    {node_ids[task.id]}["{label}"]')
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
        acceptance_criteria (one per line: a line break inside one criterion is written as a space).
        Every other value is written exactly as it is, line breaks and control characters included;
        the csv module quotes what needs it. A spreadsheet may read a cell that starts with "=" as a
        formula; `paradecom result` escapes non-printable characters when it prints CSV on a terminal.
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        # The csv module quotes a cell holding the line terminator, but (Python 3.11 at least) not one
        # holding a lone "\r", which a reader then takes for the end of the row: such rows are quoted
        # whole.
        quote_all = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(CSV_COLUMNS)
        for task in self.iter_tasks():
            labels = [f"depth-{task.depth}"]
            if task.atomic:
                labels.append("atomic")
            if task.status != "done":
                labels.append(task.status)
            if task.stop_reason:
                labels.append(f"stop:{_slug(task.stop_reason)}")
            row = [
                task.id,
                task.title,
                task.description,
                task.parent_id or "",
                ";".join(task.depends_on),
                f"{task.estimate_hours:g}" if task.estimate_hours > 0 else "",
                ";".join(labels),
                "\n".join(_CSV_LINE_BREAK.sub(" ", c) for c in task.acceptance_criteria),
            ]
            (quote_all if any("\r" in cell for cell in row) else writer).writerow(row)
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
    # The id and title are plain text, the estimate and status emphasis: nothing a title holds can
    # pass for them. Fixed labels of the lines under the task are emphasis too, criteria plain text.
    head = f"{pad}- [ ] {_md_text(task.id)} {_md_text(task.title)}"
    if task.estimate_hours > 0:
        head += f" _({_hours(task.estimate_hours)})_"
    if task.status == "dead":
        head += " **DEAD**"
    elif task.status != "done":
        head += f" _({_md_text(task.status)})_"
    lines.append(head.rstrip(" "))
    if task.description:
        # A quote, not plain text: plain lines would run on into the title's paragraph when rendered.
        lines.append(f"{inner}> " + _md_text(task.description, break_prefix=f"{inner}> "))
    if task.depends_on:
        lines.append(f"{inner}- _depends on:_ {', '.join(_md_text(d) for d in task.depends_on)}")
    if task.status == "dead":
        attempts = f"after {task.attempts} attempt{'s' if task.attempts != 1 else ''}"
        if task.last_error:
            lines.append(f"{inner}- _dead {attempts}:_ {_md_text(task.last_error)}")
        else:
            lines.append(f"{inner}- _dead {attempts}, no error recorded_")
    for criterion in task.acceptance_criteria:
        lines.append(f"{inner}- {_md_item(criterion)}")
    for child in task.children:
        _task_markdown(child, level + 1, lines)


def _hours(hours: float) -> str:
    return f"{hours:g} h"


# Markdown (CommonMark, and GitHub's extensions as marked reads them). What user text may hold and
# still be read back as exactly that text, with nothing it holds taken as syntax:
# - ASCII punctuation that starts or ends inline syntax anywhere is backslash-escaped: \ ` * _ [ ]
#   < & ~ | # @ (code, emphasis, links, HTML, entities, strikethrough, tables, headings' closing
#   sequence, e-mail autolinks); ":" before "/" and "." after "www" (GitHub's URL autolinks).
# - At the start of a line, any ASCII punctuation (block syntax: lists, quotes, fences, headings,
#   breaks, HTML blocks, tables), and "." or ")" after leading digits when a space, a line break
#   or the end follows (ordered lists). Every text is taken to start a line: marked reads what
#   follows a task's checkbox as the start of a block.
# - A space at either end of a line is written as &#32; (parsers strip those).
# - A non-printable character (str.isprintable) as a numeric character reference, &#x1B; ... or,
#   where markdown-it would read the reference as U+FFFD (NUL, other C0 controls than tab, LF, FF
#   and CR, DEL, C1 controls, surrogates, noncharacters), as a code span naming it: `U+0000`
#   (a run of them in one span: `U+001B U+0007`).
#   User text never makes a code span (its backticks are escaped), so the two cannot be confused.
# - A line break: in descriptions a hard break (backslash at the end of the line, the next line
#   under the same prefix), the last one as &#10;; elsewhere &#10;.
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_MD_ALWAYS = frozenset("\\`*_[]<&~|#@")
_MD_EMPTY_ITEM = "_(empty)_"


def _md_undecodable(code: int) -> bool:
    # The numeric character references markdown-it replaces with U+FFFD (its isValidEntityCode).
    return (
        code <= 0x08
        or code == 0x0B
        or 0x0E <= code <= 0x1F
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xDFFF
        or 0xFDD0 <= code <= 0xFDEF
        or code & 0xFFFE == 0xFFFE
    )


def _md_text(text: str, break_prefix: str | None = None) -> str:
    """User text as Markdown inline text that parses back to exactly `text`; one line unless
    `break_prefix` is given, then each line break (but a last one) is a hard break followed by a
    new line starting with `break_prefix`."""
    out: list[str] = []
    last = len(text) - 1
    line_start = 0
    for i, char in enumerate(text):
        if char == "\n":
            out.append("\\\n" + break_prefix if break_prefix is not None and i < last else "&#10;")
            line_start = i + 1
        elif char == " ":
            at_edge = i in (0, last) or text[i - 1] == "\n" or text[i + 1] == "\n"
            out.append("&#32;" if at_edge else " ")
        elif not char.isprintable():
            code = ord(char)
            if not _md_undecodable(code):
                out.append(f"&#x{code:X};")
            elif out and out[-1].endswith("`") and out[-1].startswith("`U+"):
                # One code span for a run: two spans side by side would read as one "``" delimiter.
                out[-1] = f"{out[-1][:-1]} U+{code:04X}`"
            else:
                out.append(f"`U+{code:04X}`")
        elif char in _ASCII_PUNCTUATION and (
            char in _MD_ALWAYS
            or i == line_start
            or (char in ".)" and text[line_start:i].isdigit() and text[i + 1 : i + 2] in ("", " ", "\n"))
            or (char == ":" and text[i + 1 : i + 2] == "/")
            or (char == "." and text[max(0, i - 3) : i].lower() == "www")
        ):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _md_item(text: str) -> str:
    # An empty list item could end the paragraph above it as a setext underline ("-"): say "empty".
    return _md_text(text) if text else _MD_EMPTY_ITEM


_CSV_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# Mermaid keeps, in a quoted label, letters, digits, marks and this punctuation as they are; any
# other character, and a space at either end (Mermaid trims labels), is written as Mermaid's
# entity code "#N;" (N the decimal code point), which Mermaid reads as that character. ";", ":",
# "#" and "%" must be: Mermaid's preprocessing drops the ";" of a line matching
# `style.*:\S*#.*;` and treats "%%{...}%%" anywhere as a directive.
_MERMAID_PUNCTUATION = frozenset(".,-_'!?/")


def _mermaid_text(text: str) -> str:
    last = len(text) - 1
    return "".join(
        char
        if (char == " " and 0 < i < last)
        or char in _MERMAID_PUNCTUATION
        or (char.isprintable() and unicodedata.category(char)[0] in "LMN")
        else f"#{ord(char)};"
        for i, char in enumerate(text)
    )


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
    # A JSON string is a valid YAML double-quoted scalar (Mermaid's front matter is YAML); the text
    # is printable already, so non-ASCII letters may stay as they are.
    return json.dumps(text, ensure_ascii=False)


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[0-9a-z]+", text.lower()))
