"""The structural rules every result is held to (paradecom/subtasks.py, shared by runners and the
leader): near-duplicate siblings and numbered titles, on both sides of their definitions."""

from __future__ import annotations

import pytest

from paradecom.subtasks import (
    NEAR_DUPLICATE_SIMILARITY,
    SubtaskShape,
    content_words,
    is_numbered_title,
    near_duplicates,
    similarity,
    subtask_errors,
)


def shapes(*titles: str, descriptions: tuple[str, ...] = ()) -> list[SubtaskShape]:
    """Siblings keyed by position, with distinct descriptions unless some are given."""
    descriptions = descriptions or tuple(f"Description number {'x' * i}" for i in range(len(titles)))
    return [SubtaskShape(str(i), t, [], d) for i, (t, d) in enumerate(zip(titles, descriptions, strict=True), 1)]


def test_content_words_fold_case_plurals_and_stop_words() -> None:
    """Words are runs of letters and digits, case-folded, without stop words, a plural "s" off."""
    assert content_words("Write the Unit-Tests for ResNet18") == {"write", "unit", "test", "resnet18"}
    assert content_words("Process the class list") == {"process", "class", "list"}
    assert content_words("the of a") == frozenset()


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Load data", "Load the data", 1.0),
        ("Write tests", "write the TESTS", 1.0),
        ("Set up the CI pipeline", "Set up the CI pipeline and deployment", 0.8),
        ("Load the training data", "Load the training data quickly", 0.75),
        ("Write unit tests", "Write integration tests", 0.5),
        ("Build the cart", "Build the card", 1 / 3),
        ("The", "the ", 1.0),
        ("The", "A", 0.0),
        ("", "", 0.0),
    ],
)
def test_similarity_is_the_jaccard_index_of_content_words(a: str, b: str, expected: float) -> None:
    """similarity() is |shared words| / |all words| of the two texts (symmetric); texts with no
    content word are the same only when equal ignoring case, and never when empty."""
    assert similarity(a, b) == pytest.approx(expected)
    assert similarity(b, a) == pytest.approx(expected)


def test_near_duplicate_threshold_on_both_sides() -> None:
    """At NEAR_DUPLICATE_SIMILARITY (0.8: one word of difference in five) two titles are nearly the
    same and refused; just below it (0.75: one in four) they pass."""
    assert NEAR_DUPLICATE_SIMILARITY == 0.8
    at = ("Set up the CI pipeline", "Set up the CI pipeline and deployment")
    below = ("Load the training data", "Load the training data quickly")
    assert near_duplicates(at) == [(1, 0)]
    assert near_duplicates(below) == []
    assert any("nearly the same as subtask 1's" in e for e in subtask_errors(shapes(*at)))
    assert subtask_errors(shapes(*below)) == []


def test_each_later_sibling_is_reported_once_against_the_first_it_repeats() -> None:
    """Three copies of one title give two errors, each naming the first; empty texts never match."""
    assert near_duplicates(["Build it now", "Build it now", "build IT now", "Test it"]) == [(1, 0), (2, 0)]
    assert near_duplicates(["", "", " "]) == []


def test_near_duplicate_descriptions_are_refused_and_empty_ones_are_not() -> None:
    """Siblings with different titles but (nearly) the same description are one piece of work
    described twice: refused, saying what to change. Missing descriptions are not compared."""
    text = "Train the ResNet-18 model on Fashion-MNIST for ten epochs and save the weights."
    # 9 shared content words of 11: 0.82.
    errors = subtask_errors(
        shapes("Train the model", "Fit the network", descriptions=(text, text.replace("ten", "twelve")))
    )
    assert errors == [
        "subtask 2: the description is the same or nearly the same as subtask 1's; "
        "describe what this subtask alone does"
    ]
    assert subtask_errors(shapes("Train the model", "Fit the network", descriptions=("", ""))) == []


@pytest.mark.parametrize(
    "title",
    ["Step 2: Load the data", "step 2 - load", "2. Load the data", "2) Load", "2: Load", "2 - Load", "1.2 Load it",
     "(3) Load", "#3 Load", "Part 3 - Deploy", "Phase 1: Plan", "Phase IV", "Stage 2 rollout", "Task one: x"],
)  # fmt: skip
def test_numbered_titles_are_recognised(title: str) -> None:
    """A leading enumeration in any common form makes a title numbered."""
    assert is_numbered_title(title)


@pytest.mark.parametrize(
    "title",
    ["Load the data", "Stage the release", "Part of speech tagging", "3D rendering engine", "2-factor auth",
     "2-phase commit", "Section 508 compliance", "Stepwise refinement", "Phase in the new API", "Build 2FA"],
)  # fmt: skip
def test_numbers_that_are_part_of_a_name_are_not_numbering(title: str) -> None:
    """Numbers inside names, and words such as "stage" or "part" used as words, are not numbering."""
    assert not is_numbered_title(title)


def test_numbered_title_error_says_what_to_do() -> None:
    """A numbered sibling is refused with the title quoted and the fix spelled out."""
    errors = subtask_errors(shapes("Step 1: Design it", "Build it"))
    assert errors == [
        "subtask 1: the title 'Step 1: Design it' is numbered; write it without a step number "
        "(the order of the work goes in depends_on)"
    ]


def test_a_dangling_dependency_error_lists_the_keys_that_may_be_named() -> None:
    """The error for a dependency on no sibling names the siblings it may name (positions when the
    runner assigned them)."""
    children = [SubtaskShape("1", "Design it", []), SubtaskShape("2", "Build it", ["3.756249"])]
    assert subtask_errors(children) == [
        "subtask 2: depends on '3.756249', which is not a sibling; depends_on may name only '1'"
    ]
    alone = [SubtaskShape("1", "Design it", ["0"])]
    assert subtask_errors(alone) == [
        "subtask 1: depends on '0', which is not a sibling; it has no sibling to depend on: leave depends_on empty"
    ]


def test_titles_alone_are_still_checked_without_descriptions() -> None:
    """Callers passing only key, title and depends_on (positional, as the leader does) get every
    rule but the description one."""
    children = [SubtaskShape("a", "Load data", []), SubtaskShape("b", "Load the data", ["a"])]
    [error] = subtask_errors(children)
    assert error.startswith("subtask 2: the title 'Load the data' is nearly the same as subtask 1's 'Load data'")
