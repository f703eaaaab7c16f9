"""parse_decomposition (runner/schema.py): an LLM's answer becomes subtasks, leniently where that
is harmless, or InvalidAnswer with located reasons. (tests/test_bad_llm_answers.py covers the rest.)"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from runner_fakes import answer_for, child

from paradecom import limits
from paradecom.runner.schema import InvalidAnswer, parse_decomposition


def test_parse_good_answer_gives_subtasks() -> None:
    """A well-formed answer becomes Subtask messages with every field carried over."""
    subtasks = parse_decomposition(json.dumps(answer_for("the cart")), "Build the cart")
    assert [s.key for s in subtasks] == ["1", "2"]
    assert subtasks[1].title == "Implement the cart"
    assert list(subtasks[1].depends_on) == ["1"]
    assert subtasks[0].atomic and subtasks[0].atomic_reason == "One person, one day."
    assert subtasks[0].estimate_hours == 4.0
    assert list(subtasks[0].acceptance_criteria) == ["Design the cart is reviewed"]


def test_parse_is_lenient_where_harmless() -> None:
    """Missing keys get positions, numeric keys and dependencies become strings, missing or null
    optional fields get defaults, and a bare list is taken as the subtasks."""
    text = json.dumps(
        [
            {"title": "Design the API", "atomic": False, "description": None},
            {"key": 7, "title": "Build the API", "atomic": True, "depends_on": [1], "estimate_hours": None},
            {"title": "Test the API", "atomic": True, "depends_on": "7", "acceptance_criteria": "All green"},
        ]
    )
    subtasks = parse_decomposition(text, "Make the API")
    assert [s.key for s in subtasks] == ["1", "7", "3"]
    assert subtasks[0].description == "" and list(subtasks[0].acceptance_criteria) == []
    assert list(subtasks[1].depends_on) == ["1"] and subtasks[1].estimate_hours == 0.0
    assert list(subtasks[2].depends_on) == ["7"]
    assert list(subtasks[2].acceptance_criteria) == ["All green"]


def test_parse_clips_long_text_instead_of_rejecting() -> None:
    """Over-long titles, criteria and criteria lists are clipped to the limits, not refused."""
    long_child = child("1", "Write " + "x" * 500, acceptance_criteria=["y" * 5000] * 150)
    subtasks = parse_decomposition(json.dumps({"subtasks": [long_child, child("2", "Ship it")]}), "Parent")
    assert len(subtasks[0].title) == limits.MAX_TITLE_CHARS
    assert len(subtasks[0].acceptance_criteria) == limits.MAX_LIST_ITEMS
    assert all(len(c) == limits.MAX_ITEM_CHARS for c in subtasks[0].acceptance_criteria)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda body: f"Here is the plan:\n```json\n{body}\n```\nHope it helps.",
        lambda body: f"```\n{body}\n```",
        lambda body: f"Sure! {body} Let me know.",
    ],
    ids=["json-fence", "bare-fence", "prose"],
)
def test_parse_extracts_json_from_fences_and_prose(wrap: Callable[[str], str]) -> None:
    """An object inside ``` fences or surrounded by prose is found and used."""
    subtasks = parse_decomposition(wrap(json.dumps(answer_for("search"))), "Build search")
    assert [s.title for s in subtasks] == ["Design search", "Implement search"]


def errors_of(text: str, parent: str = "Build the shop") -> list[str]:
    """The errors InvalidAnswer reports for `text`."""
    with pytest.raises(InvalidAnswer) as info:
        parse_decomposition(text, parent)
    errors: list[str] = info.value.errors
    return errors


def test_parse_rejects_text_that_is_not_json() -> None:
    """Prose without any JSON object is reported as not valid JSON."""
    errors = errors_of("I think you should first design the database.")
    assert len(errors) == 1 and errors[0].startswith("the answer is not valid JSON")


def test_parse_rejects_empty_answer() -> None:
    """An empty answer says so."""
    assert errors_of("  ") == ["the answer is empty; expected a JSON object"]


def test_parse_rejects_truncated_answer_as_invalid_json() -> None:
    """An answer cut mid-object is invalid JSON, not mistaken for the lone subtask it contains."""
    text = json.dumps(answer_for("the shop"))
    errors = errors_of(text[: len(text) * 2 // 3])
    assert len(errors) == 1 and errors[0].startswith("the answer is not valid JSON")


def test_parse_rejects_wrong_shape_with_located_errors() -> None:
    """Missing required fields and bad values are reported per subtask and field."""
    bad = {
        "subtasks": [
            child("1", "Design it"),
            {"key": "2", "description": "no title"},
            child("3", "Do", estimate_hours=-1),
        ]
    }
    errors = errors_of(json.dumps(bad))
    assert "subtask 2: title: Field required" in errors
    assert "subtask 2: atomic: Field required" in errors
    assert any(e.startswith("subtask 3: estimate_hours:") for e in errors)


def test_parse_rejects_object_without_subtasks() -> None:
    """An object with another top-level field names the one expected."""
    assert errors_of(json.dumps({"tasks": []})) == ['the object has no "subtasks" field; expected {"subtasks": [...]}']


def test_parse_rejects_dependency_cycle() -> None:
    """A cycle among sibling dependencies is refused with the cycle spelled out."""
    text = json.dumps({"subtasks": [child("a", "Do A", ["b"]), child("b", "Do B", ["a"])]})
    errors = errors_of(text)
    assert any(e.startswith("dependency cycle: ") for e in errors)


def test_parse_rejects_dangling_dependency() -> None:
    """A dependency that names no sibling key is refused."""
    errors = errors_of(json.dumps({"subtasks": [child("1", "Do A"), child("2", "Do B", ["9"])]}))
    assert errors == ["subtask 2: depends on '9', which is not a sibling; depends_on may name only '1'"]


def test_parse_rejects_structural_rule_breaks() -> None:
    """Duplicate keys, duplicate titles and descriptions, numbered titles, the parent's own title
    and an empty list are refused, each error saying what to change."""
    dup = {
        "subtasks": [
            child("1", "Do A"),
            child("1", "Do a"),
            child("3", "Build the shop"),
            child("4", "Step 4: Ship it", description="Ship the release to the customers."),
        ]
    }
    errors = errors_of(json.dumps(dup))
    assert "subtask 2: duplicate key '1'" in errors
    assert "subtask 3: repeats its parent's title; name the part of the work this subtask does" in errors
    assert (
        "subtask 2: the title 'Do a' is the same as subtask 1's 'Do A'; each subtask must be a different part "
        "of the work: change one, or merge them into one subtask"
    ) in errors
    assert (
        "subtask 2: the description is the same or nearly the same as subtask 1's; "
        "describe what this subtask alone does"
    ) in errors
    assert (
        "subtask 4: the title 'Step 4: Ship it' is numbered; write it without a step number "
        "(the order of the work goes in depends_on)"
    ) in errors
    assert errors_of(json.dumps({"subtasks": []})) == ["no subtasks"]
