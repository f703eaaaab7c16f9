"""The chat messages that ask an LLM to decompose one task, and the re-ask after a bad answer.

The user message ends with two machine-readable lines, `Task to decompose: <title>` and
`Task depth: <depth>`, each on a line of its own: the fake LLM server reads them to shape its
answer, and they give a real model an unambiguous statement of its job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from paradecom import limits
from paradecom.v1 import project_pb2, task_pb2

ANSWER_SHAPE = """{
  "subtasks": [
    {
      "key": "1",
      "title": "Write the data loader",
      "description": "What this subtask covers and where its edges are.",
      "acceptance_criteria": ["A testable statement that says when it is done"],
      "depends_on": [],
      "atomic": true,
      "atomic_reason": "One person can finish it in a day.",
      "estimate_hours": 6
    }
  ]
}"""

SYSTEM_PROMPT = f"""You decompose software project tasks into subtasks.

Rules:
- Split the task into 2 to 7 subtasks that together cover the whole task, without overlapping \
each other or the sibling tasks you are shown.
- Each title is short and starts with a verb (for example "Design the database schema").
- Each subtask has 1 to 5 acceptance criteria, each one concrete and testable.
- "key" is a short id unique among the subtasks ("1", "2", ...). "depends_on" lists the keys of \
sibling subtasks that must be finished first: sibling keys only, never the subtask itself, no cycles.
- "atomic" is true when one person can do the subtask without breaking it down further; \
"atomic_reason" says why (or why not).
- "estimate_hours" is your estimate of the effort in hours, a number >= 0.

Answer with ONLY a JSON object of this shape, no prose and no code fences:
{ANSWER_SHAPE}"""

_REASK_LEAD = "Your answer cannot be used:"
_REASK_TAIL = (
    "Answer again with ONLY the corrected JSON object of the shape given in the system message: "
    "all subtasks, not just the ones with errors."
)
_TITLE_LINE_RE = re.compile(r"^Task to decompose:.*$", re.MULTILINE)
_DEPTH_LINE_RE = re.compile(r"^Task depth:.*$", re.MULTILINE)
# A re-ask repeats at most this many errors; the first ones are enough to steer a correction.
_MAX_REASK_ERRORS = 20


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def _describe_task(spec: project_pb2.TaskSpec) -> str:
    lines = [f"Title: {spec.title}"]
    if spec.description:
        lines.append(f"Description: {spec.description}")
    if spec.acceptance_criteria:
        lines.append("Acceptance criteria:\n" + _bullets(spec.acceptance_criteria))
    return "\n".join(lines)


def build_messages(assignment: task_pb2.TaskAssignment) -> list[dict[str, str]]:
    """The system and user messages that ask for the decomposition of `assignment`'s task."""
    project = assignment.project
    task = assignment.task
    sections = [f"# Project\nName: {project.name}\nDescription: {project.description}"]
    if project.goals:
        sections.append("Goals:\n" + _bullets(project.goals))
    if project.constraints:
        sections.append("Constraints:\n" + _bullets(project.constraints))
    if assignment.ancestors:
        # The path from the top-level task down tells the model how much of the project this task is.
        path = "\n".join(f"{'  ' * level}{level + 1}. {spec.title}" for level, spec in enumerate(assignment.ancestors))
        sections.append(f"# Where this task sits (top-level task first)\n{path}")
    if assignment.sibling_titles:
        sections.append(
            "# Sibling tasks (handled separately: do not cover their work)\n" + _bullets(assignment.sibling_titles)
        )
    sections.append("# The task\n" + _describe_task(task))

    depth = assignment.depth
    max_depth = assignment.max_depth or limits.DEFAULT_MAX_DEPTH
    depth_note = f"Subtasks at depth {max_depth} are leaves: they will not be decomposed further." + (
        " The subtasks you write now are at that depth, so make each one small enough for one person."
        if depth + 1 >= max_depth
        else ""
    )
    sections.append(
        "\n".join(
            [
                # One line whatever the title holds, or the line would not be machine-readable.
                f"Task to decompose: {' '.join(task.title.split())}",
                f"Task depth: {depth}",
                f"Its subtasks will be at depth {depth + 1}. {depth_note}",
            ]
        )
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(sections)},
    ]


def reask_messages(messages: Sequence[dict[str, str]], bad_answer: str, errors: Sequence[str]) -> list[dict[str, str]]:
    """`messages` followed by the bad answer and a request to correct the listed errors."""
    listed = list(errors[:_MAX_REASK_ERRORS]) or ["the answer is not a valid decomposition"]
    # The marker lines are repeated because readers of the prompt (the fake LLM among them) look
    # only at the last user message; the last occurrence is ours, earlier ones may be quoted text.
    first_user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    markers = "\n".join(
        found[-1] for found in (_TITLE_LINE_RE.findall(first_user), _DEPTH_LINE_RE.findall(first_user)) if found
    )
    content = f"{_REASK_LEAD}\n{_bullets(listed)}\n\n{_REASK_TAIL}"
    if markers:
        content += f"\n\n{markers}"
    return [*messages, {"role": "assistant", "content": bad_answer}, {"role": "user", "content": content}]
