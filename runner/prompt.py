"""The chat messages that ask an LLM to decompose one task, and the re-ask after a bad answer.

The messages are the rules (system), one worked example (a user message and the assistant's
answer to it), then the task. A concrete example answer is what lets even a very small model (the
embedded SmolLM2-135M) write usable JSON, and such a model copies its form closely: so the example
is exactly what an answer should be, with titles that are not numbered (numbered titles are an
invalid answer, `paradecom.subtasks.subtask_errors`), siblings that differ in title and
description, no keys (a subtask's key is its position) and `depends_on` as earlier positions.

Near its end the task's user message has one line that is a JSON object, `{"task_to_decompose":
"<title on one line>", "task_depth": <depth>}` (TASK_LINE_KEYS): structured data that the fake LLM
server reads to shape its answer (paradecom/devtools/fakellm.py), and an unambiguous statement of the job
for a real model.

The leader builds the whole request (`build_request`: messages, answer schema, fan-out bounds,
re-ask rule) and hands it to every runner in TaskAssignment.llm_request (proto/paradecom/v1/
task.proto, LlmRequest), so a runner in any language sends the same request for the same task.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from paradecom import limits
from paradecom.errors import ConfigError
from paradecom.v1 import project_pb2, task_pb2

from .schema import ANSWER_PROFILES, answer_profile, decomposition_schema

# The fan-out asked of the LLM by default (the runner's --min/--max-subtasks): more children than
# the maximum is an invalid answer (re-asked); fewer than the minimum makes the task a leaf (a stop
# rule, recorded on the task).
DEFAULT_MIN_SUBTASKS = 2
DEFAULT_MAX_SUBTASKS = 7
DEFAULT_MAX_REASKS = 2
MAX_REASKS_LIMIT = 10
ENV_MAX_SUBTASKS = "PARADECOM_MAX_SUBTASKS"
ENV_MAX_REASKS = "PARADECOM_MAX_REASKS"
# LlmRequest.version: how an answer maps to subtasks (documented on LlmRequest in task.proto).
CONTRACT_VERSION = "paradecom.decompose/1"
# The keys of the task message's machine-readable line.
TASK_LINE_KEYS = ("task_to_decompose", "task_depth")

# Short on purpose: SmolLM2-135M, the embedded model, was measured to copy the example answer or
# repeat one subtask far more often under a long list of rules (0-2 valid answers in 6 DevAI
# projects) than under a few lines and the closing line of the task's message (6 in 6). Every rule
# the answer is held to is still here, once.
SYSTEM_PROMPT = """You split one software task into smaller subtasks that together cover all of it, \
without overlapping each other or the sibling tasks you are shown.
Each subtask: a title starting with a verb, not numbered ("Load the data"), a one-sentence \
description of what only this subtask does, 1 to 5 testable acceptance criteria, depends_on: the \
positions of earlier subtasks it needs first (1 is the first subtask), "atomic": true when one \
person can do it without splitting it further, with the reason in "atomic_reason", and \
"estimate_hours": the effort in hours. No two subtasks may have the same title or description.
Answer with JSON only, {"subtasks": [...]}, like the example answer."""


# The `small` answer profile (runner/schema.py: very small local models): the same rules for a
# shorter answer, whose shape the grammar enforces.
SMALL_SYSTEM_PROMPT = """You split one software task into smaller subtasks that together cover all of it.
Each subtask: a title starting with a verb that names one part of this task in the project's own words, \
and depends_on: the positions of earlier subtasks it needs first (1 is the first subtask). \
No two subtasks may have the same title, and none the title of the task itself.
Answer with JSON only, {"subtasks": [...]}, like the example answer."""


def closing_line(min_subtasks: int, max_subtasks: int) -> str:
    """The task message's last line: how many subtasks to write (the runner's fan-out bounds)."""
    count = f"{min_subtasks} to {max_subtasks}" if min_subtasks < max_subtasks else str(max_subtasks)
    return f"Write {count} subtasks for this task, each a different part of the work, in this project's own words."


def _example_assignment() -> task_pb2.TaskAssignment:
    assignment = task_pb2.TaskAssignment(depth=0, max_depth=2)
    assignment.project.name = "Team blog"
    assignment.project.description = "A small blog where the team writes posts and readers leave comments."
    assignment.task.title = "Build the team blog"
    return assignment


# The worked example's answer: short fields, so a model copying the form writes a short answer.
EXAMPLE_ANSWER = {
    "subtasks": [
        {
            "title": "Design the database schema",
            "description": "Tables for users, posts and comments.",
            "acceptance_criteria": ["The schema has tables for users, posts and comments"],
            "depends_on": [],
            "atomic": True,
            "atomic_reason": "One person can do it in a day.",
            "estimate_hours": 4,
        },
        {
            "title": "Build the post editor",
            "description": "A page where a writer writes, saves and publishes a post.",
            "acceptance_criteria": ["A writer can publish a post and see it listed"],
            "depends_on": [1],
            "atomic": False,
            "atomic_reason": "Editing, preview and publishing are separate pieces of work.",
            "estimate_hours": 8,
        },
        {
            "title": "Write the end-to-end tests",
            "description": "Tests that publish a post and comment on it.",
            "acceptance_criteria": ["The tests pass in CI"],
            "depends_on": [2],
            "atomic": True,
            "atomic_reason": "A small test suite.",
            "estimate_hours": 5,
        },
    ]
}

# The small profile's example: the small profile's fields, titles starting with the verbs its
# grammar allows at each position of three (runner/schema.py SMALL_TITLE_VERBS). A 135M model copies
# the example's titles when it cannot make sense of a task; titles this specific to the example's
# blog were measured to be copied far less (7 of 99 subtasks of 10 DevAI requests) than generic
# ones that would fit any task ("Design the data model", "Build the main screens": 47 of 95).
SMALL_EXAMPLE_ANSWER = {
    "subtasks": [
        {"title": "Design the database schema", "depends_on": [], "atomic": False},
        {"title": "Build the post editor", "depends_on": [1], "atomic": False},
        {"title": "Test publishing a post", "depends_on": [2], "atomic": False},
    ]
}

# LlmRequest.reask.template: "{reason}" stands for the problems, one "- " line each.
REASK_TEMPLATE = (
    "Your answer cannot be used:\n{reason}\n\n"
    "Answer again with ONLY the corrected JSON object, shaped like the example answer: "
    "all subtasks, not just the ones with errors."
)
# A re-ask repeats at most this many errors; the first ones are enough to steer a correction.
_MAX_REASK_ERRORS = 20
# An answer over limits.MAX_ANSWER_CHARS is shown back only this far: enough for the model to see
# what it did, and the re-ask stays within the endpoint's request and context limits.
_OVERSIZED_ANSWER_SHOWN_CHARS = 2_000


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def _describe_task(spec: project_pb2.TaskSpec) -> str:
    lines = [f"Title: {spec.title}"]
    if spec.description:
        lines.append(f"Description: {spec.description}")
    if spec.acceptance_criteria:
        lines.append("Acceptance criteria:\n" + _bullets(spec.acceptance_criteria))
    return "\n".join(lines)


def _task_prompt(
    assignment: task_pb2.TaskAssignment, min_subtasks: int, max_subtasks: int, *, siblings: bool = True
) -> str:
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
    if siblings and assignment.sibling_titles:
        sections.append(
            "# Sibling tasks (handled separately: do not cover their work)\n" + _bullets(assignment.sibling_titles)
        )
    if task.title == project.name and task.description == project.description:
        # The root task made from the project says nothing the project section did not.
        sections.append(f"# The task\nTitle: {task.title}\n(the whole project)")
    else:
        sections.append("# The task\n" + _describe_task(task))

    depth = assignment.depth
    max_depth = assignment.max_depth or limits.DEFAULT_MAX_DEPTH
    depth_note = f"Subtasks at depth {max_depth} are leaves: they will not be decomposed further." + (
        " The subtasks you write now are at that depth, so make each one small enough for one person."
        if depth + 1 >= max_depth
        else ""
    )
    # One line whatever the title holds (split() takes every line break with the other white space),
    # or the line would not be machine-readable.
    task_line = json.dumps(dict(zip(TASK_LINE_KEYS, (" ".join(task.title.split()), depth), strict=True)))
    sections.append(
        "\n".join(
            [
                task_line,
                f"Its subtasks will be at depth {depth + 1}. {depth_note}",
                closing_line(min_subtasks, max_subtasks),
            ]
        )
    )
    return "\n\n".join(sections)


def build_messages(
    assignment: task_pb2.TaskAssignment,
    min_subtasks: int = DEFAULT_MIN_SUBTASKS,
    max_subtasks: int = DEFAULT_MAX_SUBTASKS,
    *,
    profile: str | None = None,
) -> list[dict[str, str]]:
    """The messages that ask for the decomposition of `assignment`'s task into `min_subtasks` to
    `max_subtasks` subtasks: the rules, the worked example, and the task itself (always the last
    message, a user message). `profile` is the answer profile (None: `schema.answer_profile()`,
    from the environment); the `small` one asks for exactly `max_subtasks` subtasks, as its schema does."""
    if not 1 <= min_subtasks <= max_subtasks <= limits.MAX_SUBTASKS:
        raise ValueError(f"subtask bounds must satisfy 1 <= min <= max <= {limits.MAX_SUBTASKS}")
    small = (profile or answer_profile()) == "small"
    if small:
        min_subtasks = max_subtasks
    return [
        *({"role": role, "content": content} for role, content in _leading_messages(min_subtasks, max_subtasks, small)),
        # A small model shown the sibling tasks copies their titles as subtasks (measured on the
        # demo: every task of the second level had an uncle's title among its children).
        {"role": "user", "content": _task_prompt(assignment, min_subtasks, max_subtasks, siblings=not small)},
    ]


@functools.lru_cache(maxsize=64)
def _leading_messages(min_subtasks: int, max_subtasks: int, small: bool) -> tuple[tuple[str, str], ...]:
    """(role, content) of the rules and the worked example: the same for every task, and a leader
    builds a request for every assignment it hands out."""
    system, example = (SMALL_SYSTEM_PROMPT, SMALL_EXAMPLE_ANSWER) if small else (SYSTEM_PROMPT, EXAMPLE_ANSWER)
    return (
        ("system", system),
        ("user", _task_prompt(_example_assignment(), min_subtasks, max_subtasks)),
        ("assistant", json.dumps(example)),
    )


def reask_messages(
    messages: Sequence[Mapping[str, str]], bad_answer: str, errors: Sequence[str], template: str = REASK_TEMPLATE
) -> list[dict[str, str]]:
    """The re-ask of LlmRequest: the request's `messages` followed by the bad answer (role
    assistant) and `template` with "{reason}" replaced by the errors, one "- " line each.

    Only the latest bad answer is ever shown (the caller passes the request's own messages, not the
    conversation so far): the conversation does not grow with every round (small local models have
    small context windows) and the model is not anchored to its older mistakes.
    """
    listed = list(errors[:_MAX_REASK_ERRORS]) or ["the answer is not a valid decomposition"]
    if len(bad_answer) > limits.MAX_ANSWER_CHARS:
        bad_answer = bad_answer[:_OVERSIZED_ANSWER_SHOWN_CHARS] + f"… [{len(bad_answer):,} characters in all]"
    return [
        *(dict(m) for m in messages),
        {"role": "assistant", "content": bad_answer},
        {"role": "user", "content": template.replace("{reason}", _bullets(listed))},
    ]


def _env_int(name: str, low: int, high: int) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"{name}={text!r} is not a whole number from {low} to {high}")
    return int(text)


@dataclass(frozen=True)
class RequestSettings:
    """What shapes every task's LLM request, decided by the leader for all runners (LlmRequest):
    the fan-out bounds, the re-asks, and the answer profile (runner/schema.py). What an endpoint
    supports (structured-output mode, max_tokens, timeout) and the model stay the runner's."""

    min_subtasks: int = DEFAULT_MIN_SUBTASKS
    max_subtasks: int = DEFAULT_MAX_SUBTASKS
    max_reasks: int = DEFAULT_MAX_REASKS
    answer_profile: str = "full"

    def __post_init__(self) -> None:
        if not 1 <= self.min_subtasks <= self.max_subtasks <= limits.MAX_SUBTASKS:
            raise ValueError(f"subtask bounds must satisfy 1 <= min <= max <= {limits.MAX_SUBTASKS}")
        if not 0 <= self.max_reasks <= MAX_REASKS_LIMIT:
            raise ValueError(f"max_reasks must be 0 to {MAX_REASKS_LIMIT}, not {self.max_reasks}")
        if self.answer_profile not in ANSWER_PROFILES:
            raise ValueError(f"answer_profile must be one of {', '.join(ANSWER_PROFILES)}")

    @classmethod
    def from_environment(cls) -> RequestSettings:
        """$PARADECOM_MAX_SUBTASKS (the minimum follows it down), $PARADECOM_MAX_REASKS and
        $PARADECOM_ANSWER_PROFILE where set, else the defaults; ConfigError names a bad value."""
        max_subtasks = _env_int(ENV_MAX_SUBTASKS, 1, limits.MAX_SUBTASKS) or DEFAULT_MAX_SUBTASKS
        reasks = _env_int(ENV_MAX_REASKS, 0, MAX_REASKS_LIMIT)
        return cls(
            min_subtasks=min(DEFAULT_MIN_SUBTASKS, max_subtasks),
            max_subtasks=max_subtasks,
            max_reasks=DEFAULT_MAX_REASKS if reasks is None else reasks,
            answer_profile=answer_profile(),
        )


@functools.lru_cache(maxsize=64)
def _schema_json(max_subtasks: int, profile: str) -> str:
    # Built from the pydantic models for every assignment otherwise: a leader hands out thousands.
    return json.dumps(decomposition_schema(max_subtasks, profile=profile))


def build_request(assignment: task_pb2.TaskAssignment, settings: RequestSettings) -> task_pb2.LlmRequest:
    """The LlmRequest that decomposes `assignment`'s task (every field of the assignment but
    `lease` and `llm_request` may shape it)."""
    messages = build_messages(assignment, settings.min_subtasks, settings.max_subtasks, profile=settings.answer_profile)
    return task_pb2.LlmRequest(
        version=CONTRACT_VERSION,
        messages=[task_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        answer_schema_json=_schema_json(settings.max_subtasks, settings.answer_profile),
        min_subtasks=settings.min_subtasks,
        max_subtasks=settings.max_subtasks,
        reask=task_pb2.ReaskRule(max_reasks=settings.max_reasks, template=REASK_TEMPLATE),
    )
