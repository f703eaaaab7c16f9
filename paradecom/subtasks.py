"""Structural rules for the children of one task, shared by the runner (before it submits) and the
leader (before it accepts): a runner in another language is held to the same rules.

Besides keys, dependencies and cycles, the rules refuse what makes a decomposition useless even when
it is well formed, which small models write often: two siblings that are the same piece of work
under (nearly) the same title or description, and numbered titles ("Step 2: ...", whose order
belongs in `depends_on`). "Nearly the same" is `similarity` at or above NEAR_DUPLICATE_SIMILARITY,
defined on words so that it is deterministic and explainable in one line of an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from paradecom import limits


@dataclass(frozen=True)
class SubtaskShape:
    """The parts of a subtask the structural rules look at. `description` is optional so that
    callers with titles alone are still checked; an empty description is compared with nothing."""

    key: str
    title: str
    depends_on: Sequence[str]
    description: str = ""


# Two texts whose word sets share at least this share of their union (Jaccard index) are nearly the
# same: for titles of four or five content words, one word of difference at most. "Load the
# training data" and "Load the training data quickly" (3/4 = 0.75) pass, as do "Write unit tests" and
# "Write integration tests" (2/4); "Set up the CI pipeline" and "Set up the CI pipeline and
# deployment" (4/5) do not, nor do "Load data" and "Load the data" (1.0). Descriptions keep room to
# share the project's vocabulary. tests/test_subtasks.py pins both sides of the threshold.
NEAR_DUPLICATE_SIMILARITY = 0.8
# Words that say nothing about which piece of work a text is. Short on purpose: every word here is
# one two texts may differ in and still be judged the same.
STOP_WORDS = frozenset(
    {
        "a", "an", "the", "and", "or", "of", "to", "for", "in", "on", "at", "by", "with", "from", "into", "as",
        "its", "it", "this", "that", "these", "those", "is", "are", "be", "all", "each", "every", "any", "some",
        "our", "their", "your",
    }
)  # fmt: skip
# The sibling keys an error about a dependency lists, when they fit in this many characters.
_MAX_LISTED_KEYS_CHARS = 200
_WORD_RE = re.compile(r"[^\W_]+")
# A leading enumeration: "Step 2: ", "step 2 - ", "Part 3 ", "Phase IV", "Task one", "2. ", "2) ", "2: ",
# "2 - ", "1.2 ", "(2) ", "#2 ". Not "2-phase commit", "3D engine", "Section 508": a number that
# is part of the name. The order of the work is `depends_on`'s to say, not the titles'.
_NUMBERED_TITLE_RE = re.compile(
    r"^\s*(?:"
    r"(?:step|part|phase|stage|task|subtask|milestone|sprint)\s*#?\s*"
    r"(?:\d+|(?-i:[IVX]+)|one|two|three|four|five|six|seven|eight|nine|ten)\b"
    r"|#\d+\b"
    r"|\d+(?:\.\d+)+\s"
    r"|\d+(?:\.\d+)*\s*(?:[.):]|[\-\u2013\u2014]\s)"
    r"|\(\d+\)"
    r")",
    re.IGNORECASE,
)


def content_words(text: str) -> frozenset[str]:
    """The words of `text` that `similarity` compares: maximal runs of letters and digits, case-folded,
    stop words dropped, and a plural "s" taken off words of more than 3 letters not ending in "ss"
    (so "tests" and "test" are one word)."""
    words: set[str] = set()
    for word in _WORD_RE.findall(text.casefold()):
        if word in STOP_WORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return frozenset(words)


def similarity(a: str, b: str) -> float:
    """How nearly `a` and `b` say the same, from 0.0 to 1.0: the Jaccard index of their
    `content_words` (shared words over all words of both). Texts with no content word are 1.0 when
    equal ignoring case and surrounding space (and non-empty), else 0.0."""
    wa, wb = content_words(a), content_words(b)
    if not wa or not wb:
        same = a.strip().casefold() == b.strip().casefold() and bool(a.strip())
        return 1.0 if same else 0.0
    return len(wa & wb) / len(wa | wb)


def is_numbered_title(title: str) -> bool:
    """Whether `title` starts with an enumeration such as "Step 2:", "2.", "Part 3 -" or "Phase 1"."""
    return _NUMBERED_TITLE_RE.match(title) is not None


def without_numbering(title: str) -> str:
    """`title` with a leading enumeration ("Step 2: ", "2. ", "Part 3 - ") and the separators after
    it taken off; `title` as it is when it is not numbered or would be left empty."""
    match = _NUMBERED_TITLE_RE.match(title)
    if match is None:
        return title
    rest = title[match.end() :].lstrip(" \t:.)-\u2013\u2014")
    return rest if rest.strip() else title


def near_duplicates(texts: Sequence[str]) -> list[tuple[int, int]]:
    """(later, earlier) 0-based index pairs of `texts` that are nearly the same (`similarity` at or
    above NEAR_DUPLICATE_SIMILARITY), each later text paired with the first earlier one it matches.
    Empty texts are never duplicates."""
    pairs: list[tuple[int, int]] = []
    for j in range(1, len(texts)):
        if not texts[j].strip():
            continue
        for i in range(j):
            if texts[i].strip() and similarity(texts[i], texts[j]) >= NEAR_DUPLICATE_SIMILARITY:
                pairs.append((j, i))
                break
    return pairs


def _quote(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _may_name(children: Sequence[SubtaskShape], child: SubtaskShape) -> str:
    others = [c.key for c in children if c.key != child.key and c.key.strip()]
    listed = ", ".join(repr(k) for k in others)
    if not others:
        return "it has no sibling to depend on: leave depends_on empty"
    if len(listed) > _MAX_LISTED_KEYS_CHARS:
        return "depends_on may name only the keys of sibling subtasks"
    return f"depends_on may name only {listed}"


def subtask_errors(children: Sequence[SubtaskShape], *, parent_title: str = "") -> list[str]:
    """Every rule the children break, as human-readable lines that say what to change; empty when
    they are valid.

    Rules: 1 to MAX_SUBTASKS children; keys non-empty, short and unique; titles non-empty, short,
    not numbered (`is_numbered_title`), not the parent's own title, and no two siblings with the same
    or nearly the same title or description (`near_duplicates`); depends_on names sibling keys
    only, never the child itself, and the dependencies have no cycle.
    """
    errors: list[str] = []
    if not children:
        return ["no subtasks"]
    if len(children) > limits.MAX_SUBTASKS:
        errors.append(f"{len(children)} subtasks, more than the limit of {limits.MAX_SUBTASKS}")
    keys: set[str] = set()
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
        elif parent_title and title.casefold() == parent_title.strip().casefold():
            errors.append(f"{where}: repeats its parent's title; name the part of the work this subtask does")
        elif is_numbered_title(title):
            errors.append(
                f"{where}: the title {_quote(title)} is numbered; write it without a step number "
                "(the order of the work goes in depends_on)"
            )
    titles = [c.title for c in children]
    for j, i in near_duplicates(titles):
        same = "the same" if titles[j].strip().casefold() == titles[i].strip().casefold() else "nearly the same"
        errors.append(
            f"subtask {j + 1}: the title {_quote(titles[j])} is {same} as subtask {i + 1}'s {_quote(titles[i])}; "
            "each subtask must be a different part of the work: change one, or merge them into one subtask"
        )
    descriptions = [c.description for c in children]
    for j, i in near_duplicates(descriptions):
        errors.append(
            f"subtask {j + 1}: the description is the same or nearly the same as subtask {i + 1}'s; "
            "describe what this subtask alone does"
        )
    for i, child in enumerate(children, start=1):
        for dep in child.depends_on:
            if dep == child.key:
                errors.append(f"subtask {i}: depends on itself")
            elif dep not in keys:
                errors.append(f"subtask {i}: depends on {dep!r}, which is not a sibling; {_may_name(children, child)}")
    cycle = find_cycle({c.key: [d for d in c.depends_on if d in keys and d != c.key] for c in children})
    if cycle:
        errors.append("dependency cycle: " + " -> ".join(cycle) + "; a subtask may depend only on earlier ones")
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
