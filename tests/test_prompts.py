"""The prompts (runner/prompt.py): the messages a decomposition sends, and a re-ask's."""

from __future__ import annotations

import pytest
from runner_fakes import make_assignment

from paradecom.devtools.fakellm import parse_messages
from paradecom.runner.prompt import REASK_TEMPLATE, build_messages, reask_messages


def test_build_messages_has_the_task_line_and_context() -> None:
    """The rules, a worked example, then the task's user message carrying project, ancestors,
    siblings, the task, and the task line: structured data (JSON) on a line of its own."""
    messages = build_messages(make_assignment(4, depth=2, max_depth=3))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system, user = messages[0]["content"], messages[-1]["content"]
    assert '"subtasks"' in system and "JSON" in system
    lines = user.splitlines()
    assert '{"task_to_decompose": "Build part 4", "task_depth": 2}' in lines
    assert "Subtasks at depth 3 are leaves" in user
    for text in (
        "Web shop",
        "used books",
        "Sell books online",
        "Python only",
        "Build the web shop",
        "Write the docs",
    ):
        assert text in user


def test_build_messages_states_the_rules_and_the_configured_fan_out() -> None:
    """The prompt asks for the runner's --min/--max-subtasks and states every rule an answer is
    held to: coverage without overlap, verb titles without numbers, 1-5 criteria, dependencies on
    earlier positions, atomic with a reason, an estimate in hours, no two siblings alike."""
    default = build_messages(make_assignment())
    assert "Write 2 to 7 subtasks" in default[-1]["content"]
    narrow = build_messages(make_assignment(), 3, 4)
    assert "Write 3 to 4 subtasks" in narrow[-1]["content"] and "Write 3 to 4 subtasks" in narrow[1]["content"]
    assert "Write 5 subtasks" in build_messages(make_assignment(), 5, 5)[-1]["content"]
    system = default[0]["content"]
    for rule in ("cover all of it", "without overlapping", "starting with a verb, not numbered",
                 "1 to 5 testable acceptance", "positions of earlier subtasks", "atomic_reason", "estimate_hours",
                 "No two subtasks may have the same title or description"):  # fmt: skip
        assert rule in system, rule
    with pytest.raises(ValueError):
        build_messages(make_assignment(), 4, 3)


def test_build_messages_keeps_the_task_line_on_one_line() -> None:
    """A title with line breaks (any Unicode one) still yields one machine-readable task line."""
    assignment = make_assignment()
    assignment.task.title = "Build\nthe\u2028sh\u00f6p"
    lines = build_messages(assignment)[-1]["content"].split("\n")
    assert '{"task_to_decompose": "Build the sh\\u00f6p", "task_depth": 0}' in lines
    assert parse_messages(build_messages(assignment)) == ("Build the sh\u00f6p", 0, True)


def test_reask_messages_append_answer_and_the_template_with_the_errors() -> None:
    """A re-ask is the request's messages, the bad answer and the re-ask rule's template with the
    errors as "- " lines; the task line stays where it was, in the task's message."""
    first = build_messages(make_assignment(2, depth=1))
    again = reask_messages(first, "{oops", ["the answer is not valid JSON", "subtask 1: empty title"])
    assert again[: len(first)] == first and len(again) == len(first) + 2
    assert again[-2] == {"role": "assistant", "content": "{oops"}
    assert again[-1] == {
        "role": "user",
        "content": REASK_TEMPLATE.replace("{reason}", "- the answer is not valid JSON\n- subtask 1: empty title"),
    }
    assert parse_messages(again) == ("Build part 2", 1, True)
    custom = reask_messages(first, "x", ["e"], "Wrong ({reason}); again.")
    assert custom[-1]["content"] == "Wrong (- e); again."
