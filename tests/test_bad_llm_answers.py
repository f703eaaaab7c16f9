"""Bad LLM answers: the runner's parser turns every kind of bad answer into InvalidAnswer with the
reasons, and a cluster facing an LLM that never answers well dead-letters the task and still
finishes the project.

tests/test_answer_parsing.py already covers: prose without JSON, an empty answer, a truncated answer,
missing title/atomic, a negative estimate, no "subtasks" field, a two-task cycle, a dangling
dependency, duplicate keys and titles, the parent's title repeated, an empty list, clipping of long
text, fences and prose around the object. This file covers the rest.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paradecom import limits
from paradecom.runner.schema import (
    MAX_JSON_DECODE_ATTEMPTS,
    MAX_REPORTED_ERRORS,
    InvalidAnswer,
    parse_decomposition,
)
from paradecom.subtasks import SubtaskShape, find_cycle, subtask_errors

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def child(key: str, title: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "title": title, "atomic": True, **fields}


def errors_of(text: str, parent: str = "Build the shop") -> list[str]:
    with pytest.raises(InvalidAnswer) as info:
        parse_decomposition(text, parent)
    errors: list[str] = info.value.errors
    assert errors, "InvalidAnswer must say why"
    return errors


def two(first: dict[str, Any]) -> str:
    """An answer whose first subtask is `first` and whose second is fine."""
    return json.dumps({"subtasks": [first, child("2", "Ship the rest")]})


# --- wrong types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"subtasks": null}', "subtasks: "),
        ('{"subtasks": "do everything"}', "subtasks: "),
        ('{"subtasks": 3}', "subtasks: "),
        ('{"subtasks": {"1": {"title": "Do it", "atomic": true}}}', "subtasks: "),
        ('{"subtasks": [[1, 2], "Do it"]}', "subtask 1: "),
        (two(child("1", "Do A", depends_on={"x": 1})), "subtask 1: depends_on"),
        (two(child("1", "Do A", depends_on=[[1]])), "subtask 1: depends_on"),
        (two(child("1", "Do A", depends_on=1.5)), "subtask 1: depends_on"),
        (two(child("1", "Do A", acceptance_criteria=5)), "subtask 1: acceptance_criteria"),
        (two(child("1", "Do A", acceptance_criteria=[{"x": 1}])), "subtask 1: acceptance_criteria"),
        (two({"key": True, "title": "Do A", "atomic": True}), "subtask 1: key"),
        (two({"key": "1", "title": ["Do", "A"], "atomic": True}), "subtask 1: title"),
        (two({"key": "1", "title": None, "atomic": True}), "subtask 1: title"),
        (two({"key": "1", "title": "Do A", "atomic": "maybe"}), "subtask 1: atomic"),
        (two(child("1", "Do A", estimate_hours="a week")), "subtask 1: estimate_hours"),
        ('{"subtasks": [{"key": "1", "title": "Do A", "atomic": true, "estimate_hours": NaN}]}', "estimate_hours"),
        ('{"subtasks": [{"key": "1", "title": "Do A", "atomic": true, "estimate_hours": Infinity}]}', "estimate_hours"),
    ],
    ids=lambda v: v if len(v) < 40 else v[:40],
)
def test_wrong_types_are_reported_by_field(text: str, needle: str) -> None:
    """Containers and scalars of the wrong type anywhere in the answer are InvalidAnswer errors
    that name the subtask and field, so the re-ask tells the LLM what to fix."""
    errors = errors_of(text)
    assert any(needle in e for e in errors), errors


@pytest.mark.parametrize("text", ["42", '"a plan"', "null", "true", "[1, 2, 3]", '[["a"]]'])
def test_top_level_values_that_are_not_the_object(text: str) -> None:
    """A bare number, string, null, boolean or a list of non-objects is refused with a reason."""
    errors_of(text)


def test_lone_surrogate_in_a_title_is_refused() -> None:
    r"""A title with a lone UTF-16 surrogate (`\ud800`) cannot go into a protobuf string: refused."""
    text = '{"subtasks": [{"key": "1", "title": "Do \\ud800 this", "atomic": true}, {"title": "B", "atomic": true}]}'
    errors = errors_of(text)
    assert any("subtask 1: title" in e for e in errors)


# --- structure ------------------------------------------------------------------------------------


def test_self_dependency_and_longer_cycles_are_refused() -> None:
    """A subtask depending on itself, and a three-subtask cycle, are refused."""
    assert "subtask 1: depends on itself" in errors_of(two(child("1", "Do A", depends_on=["1"])))
    ring = [child("a", "Do A", depends_on=["c"]), child("b", "Do B", depends_on=["a"]),
            child("c", "Do C", depends_on=["b"])]  # fmt: skip
    assert any(e.startswith("dependency cycle: ") for e in errors_of(json.dumps({"subtasks": ring})))


def test_position_key_colliding_with_an_explicit_key_is_refused() -> None:
    """A subtask without a key gets its position as key; when that clashes with a sibling's
    explicit key it is a duplicate key, not a silent merge."""
    text = json.dumps({"subtasks": [child("2", "Do A"), {"title": "Do B", "atomic": True}]})
    assert "subtask 2: duplicate key '2'" in errors_of(text)


@pytest.mark.slow
def test_more_subtasks_than_the_limit_are_refused() -> None:
    """More children than limits.MAX_SUBTASKS is one clear error."""
    many = [child(str(i), f"Do part {i}") for i in range(1, 1001)]
    errors = errors_of(json.dumps({"subtasks": many}))
    assert any(str(limits.MAX_SUBTASKS) in e for e in errors), errors


def test_reported_errors_are_capped() -> None:
    """Five hundred broken subtasks give at most MAX_REPORTED_ERRORS errors, not a re-ask prompt
    longer than the answer."""
    errors = errors_of(json.dumps({"subtasks": [{"x": i} for i in range(500)]}))
    assert 0 < len(errors) <= MAX_REPORTED_ERRORS


# --- enormous answers -----------------------------------------------------------------------------


def test_enormous_valid_answer_is_clipped_to_the_limits() -> None:
    """A valid answer just under limits.MAX_ANSWER_CHARS is parsed and every text clipped to its
    limit."""
    huge = child("1", "Write " + "x" * 200_000, description="d" * 200_000,
                 acceptance_criteria=["c" * 3_000] * 150, atomic_reason="r" * 100_000)  # fmt: skip
    text = two(huge)
    assert limits.MAX_ANSWER_CHARS - 100_000 < len(text) <= limits.MAX_ANSWER_CHARS
    first = parse_decomposition(text, "Parent")[0]
    assert len(first.title) == limits.MAX_TITLE_CHARS
    assert len(first.description) == limits.MAX_DESCRIPTION_CHARS
    assert len(first.acceptance_criteria) == limits.MAX_LIST_ITEMS
    assert all(len(c) == limits.MAX_ITEM_CHARS for c in first.acceptance_criteria)
    assert len(first.atomic_reason) == limits.MAX_ITEM_CHARS


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the position of every JSON decode the parser tries (json.loads goes through
    JSONDecoder.raw_decode too), so a test can bound the work done without timing it."""
    positions: list[int] = []
    real = json.JSONDecoder.raw_decode

    def counting(self: json.JSONDecoder, s: str, idx: int = 0) -> tuple[Any, int]:
        positions.append(idx)
        return real(self, s, idx)

    monkeypatch.setattr(json.JSONDecoder, "raw_decode", counting)
    return positions


def test_answer_over_the_size_limit_is_refused_unread(decodes: list[int]) -> None:
    """An answer longer than limits.MAX_ANSWER_CHARS, even valid JSON, is an InvalidAnswer naming
    the limit, and no decode of it is even tried."""
    padding = " " * limits.MAX_ANSWER_CHARS
    errors = errors_of(two(child("1", "Do A")) + padding)
    assert errors == [
        f"the answer is {limits.MAX_ANSWER_CHARS + len(two(child('1', 'Do A'))):,} characters, more than the "
        f"limit of {limits.MAX_ANSWER_CHARS:,}: write a much shorter answer"
    ]
    assert decodes == []


@pytest.mark.parametrize(
    "text",
    [
        '"subtasks": ' + "{" * 200_000,
        "[" + '{"a": 1} ' * 50_000 + '"subtasks"',
        "```json\n{```\n" * 50_000 + '"subtasks"',
        '{"subtasks": [' + '{"title": "Do A", "atomic": true}, ' * 20_000,
    ],
    ids=["braces", "objects-in-prose", "fences", "cut-off-list"],
)
def test_search_for_the_object_is_bounded(decodes: list[int], text: str) -> None:
    """However many `{` and fences an answer has, at most MAX_JSON_DECODE_ATTEMPTS decodes are
    tried: each failed decode costs time in proportion to the text, so one per `{` was quadratic
    (80 KB of `{` took seconds and blocked the runner's event loop)."""
    assert len(text) <= limits.MAX_ANSWER_CHARS
    errors_of(text)
    assert 1 <= len(decodes) <= MAX_JSON_DECODE_ATTEMPTS


def test_no_search_when_the_field_name_is_not_in_the_text(decodes: list[int]) -> None:
    """Text that does not contain "subtasks" cannot hold the object, so after the whole text fails
    to parse, no `{` in it is tried."""
    errors_of("Here is my plan: " + "{" * 100_000)
    assert decodes == [0]


def test_object_after_examples_in_prose_is_still_found(decodes: list[int]) -> None:
    """The bound does not lose a real answer that follows a few other objects in the prose."""
    prose = "Some examples: " + " ".join(json.dumps({"n": i}) for i in range(10)) + ". The plan: "
    subtasks = parse_decomposition(prose + two(child("1", "Do A")) + " Hope it helps.", "Parent")
    assert [s.title for s in subtasks] == ["Do A", "Ship the rest"]
    assert len(decodes) <= MAX_JSON_DECODE_ATTEMPTS


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"subtasks": ' + "[" * 5_000 + "]" * 5_000 + "}",
        "Plan: " + '{"a":' * 3_000,
        'Plan: {"subtasks": ' + "[" * 5_000 + "]" * 5_000 + "}!",
        '"subtasks" ' + '{"a":' * 30_000,
    ],
    ids=["deep-list", "deep-subtasks", "deep-prose", "deep-subtasks-in-prose", "deep-objects-searched"],
)
def test_deeply_nested_answer_is_an_invalid_answer(text: str) -> None:
    """Deeply nested JSON (an LLM stuck repeating a bracket) is an InvalidAnswer, re-asked like any
    other, not a RecursionError that turns into a 'runner error' FailTask."""
    errors = errors_of(text)
    assert all("not valid JSON" in e for e in errors), errors


@pytest.mark.parametrize("field", ["key", "estimate_hours", "depends_on"])
@pytest.mark.parametrize("digits", [4_000, 5_000])
def test_huge_integer_is_an_invalid_answer(field: str, digits: int) -> None:
    """An integer of thousands of digits anywhere in the answer is an InvalidAnswer: past Python's
    4,300-digit limit json refuses it (a ValueError), below it float() overflows (an
    OverflowError); neither escapes."""
    number = "1" + "0" * digits
    text = '{"subtasks": [{"title": "Do A", "atomic": true, "' + field + '": ' + number + "}, "
    text += '{"title": "Do B", "atomic": true}]}'
    errors_of(text)


# --- any input ------------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=30)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
KEYS = st.one_of(st.sampled_from(["1", "2", "3", "a", ""]), st.integers(0, 5), st.none(), JSON_SCALARS)
SUBTASK = st.fixed_dictionaries(
    {},
    optional={
        "key": KEYS,
        "title": st.one_of(st.text(max_size=40), st.sampled_from(["Do A", "Do B", "Build the shop"]), JSON_VALUES),
        "description": st.one_of(st.text(max_size=40), JSON_VALUES),
        "acceptance_criteria": st.one_of(st.lists(st.text(max_size=20), max_size=3), JSON_VALUES),
        "depends_on": st.one_of(st.lists(KEYS, max_size=3), KEYS, JSON_VALUES),
        "atomic": st.one_of(st.booleans(), JSON_VALUES),
        "atomic_reason": st.one_of(st.text(max_size=20), JSON_VALUES),
        "estimate_hours": st.one_of(st.floats(), st.integers(-5, 10**6), JSON_VALUES),
    },
)
ANSWERS = st.one_of(
    st.text(max_size=200),
    JSON_VALUES.map(json.dumps),
    st.lists(SUBTASK, max_size=25).map(lambda subtasks: json.dumps({"subtasks": subtasks})),
    st.lists(SUBTASK, min_size=1, max_size=4).map(
        lambda subtasks: "Here you go:\n```json\n" + json.dumps({"subtasks": subtasks}) + "\n```"
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANSWERS, st.booleans())
@pytest.mark.slow
def test_any_answer_is_valid_subtasks_or_invalid_answer(text: str, salvage: bool) -> None:
    """Whatever the LLM writes (text, any JSON, subtasks with fields of any type), the parser
    returns subtasks that keep every rule the leader checks, or raises InvalidAnswer with reasons;
    never any other exception. The same when it salvages what it can (the runner's last answer)."""
    try:
        subtasks = parse_decomposition(text, "Build the shop", salvage=salvage)
    except InvalidAnswer as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
        assert len(exc.errors) <= MAX_REPORTED_ERRORS
        return
    assert 1 <= len(subtasks) <= limits.MAX_SUBTASKS
    keys = [s.key for s in subtasks]
    assert len(set(keys)) == len(keys) and all(keys)
    titles = [s.title.casefold() for s in subtasks]
    assert len(set(titles)) == len(titles) and all(t.strip() for t in titles)
    assert "build the shop" not in titles
    for s in subtasks:
        assert len(s.title) <= limits.MAX_TITLE_CHARS
        assert set(s.depends_on) <= set(keys) - {s.key}
        assert s.estimate_hours >= 0
        s.SerializeToString()  # every string is valid UTF-8 for protobuf
    assert not find_cycle({s.key: list(s.depends_on) for s in subtasks})
    shapes = [SubtaskShape(s.key, s.title, list(s.depends_on), s.description) for s in subtasks]
    assert subtask_errors(shapes, parent_title="Build the shop") == []


def test_criteria_without_a_word_are_left_out() -> None:
    """Criteria with no letter or digit (punctuation a small model leaves behind) are dropped."""
    [first, _] = parse_decomposition(two(child("1", "Do A", acceptance_criteria=["],", " - ", "It works", ""])), "P")
    assert list(first.acceptance_criteria) == ["It works"]


# --- the last answer: salvaged ------------------------------------------------------------------


def test_salvage_keeps_what_is_sound_in_an_answer() -> None:
    """With salvage (the runner's last answer) an answer is not refused for its children's faults:
    a numbered title loses its number, the parent's title again, a sibling nearly repeating an
    earlier one (by title or by description) and an empty title are left out, and dependencies
    on what was left out are dropped. Without salvage the same answer is refused."""
    answer = {
        "subtasks": [
            child("1", "Step 1: Load the data", description="Read the CSV files."),
            child("2", "Load the data", depends_on=["1"]),
            child("3", "Build the shop"),
            child("4", "Train the model", depends_on=["2", "3"], description="Fit it on the loaded rows."),
            child("5", "Fit the classifier", description="Fit it on the loaded rows!"),
            child("6", "Evaluate the model", depends_on=["4", "5"]),
        ]
    }
    text = json.dumps(answer)
    assert len(errors_of(text)) == 3  # numbered, the parent again, a description repeated
    kept = parse_decomposition(text, "Build the shop", salvage=True)
    assert [(s.key, s.title, list(s.depends_on)) for s in kept] == [
        ("1", "Load the data", []),
        ("4", "Train the model", []),
        ("6", "Evaluate the model", ["4"]),
    ]


@pytest.mark.parametrize(
    "subtasks",
    [
        [child("1", "Build the shop"), child("2", "build the shop ")],
        [child("a", "Do A", depends_on=["b"]), child("b", "Do B", depends_on=["a"])],
    ],
    ids=["nothing-left", "cycle"],
)
def test_salvage_still_refuses_what_it_cannot_mend(subtasks: list[dict[str, Any]]) -> None:
    """Nothing left after leaving out the faulty children, or a dependency cycle (which child to
    cut is a guess): refused with the errors of the answer as it was."""
    with pytest.raises(InvalidAnswer) as info:
        parse_decomposition(json.dumps({"subtasks": subtasks}), "Build the shop", salvage=True)
    assert info.value.errors


# --- a cluster facing a bad LLM -------------------------------------------------------------------

# An OpenAI-compatible server that answers fake-llm's valid decompositions, except for tasks whose
# title contains "POISON": those always get text that is not JSON; and "HUGE": those always get
# 1.2 million characters of a subtask list that never ends (a model stuck in a loop).
SCRIPTED_LLM = r"""
import json, sys, time
from aiohttp import web
from paradecom.devtools.fakellm import decomposition, parse_messages

async def chat(request):
    body = await request.json()
    title, depth, _ = parse_messages(body["messages"])
    if "POISON" in title:
        content = "I am sorry, I cannot produce JSON for " + title
    elif "HUGE" in title:
        content = '{"subtasks": [' + '{"title": "Do it again", "atomic": true}, ' * 30_000
    else:
        content = json.dumps(decomposition(title, depth, 2, 10))
    return web.json_response({
        "id": "scripted", "object": "chat.completion", "created": int(time.time()), "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    })

async def main():
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening 127.0.0.1:{port}", flush=True)
    while True:
        await __import__("asyncio").sleep(3600)

__import__("asyncio").run(main())
"""


def _tree(leader: str, project_id: str) -> dict[str, Any]:
    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"])
    assert result.returncode == 0, result.stderr
    tree: dict[str, Any] = json.loads(result.stdout)
    return tree


@pytest.mark.slow
def test_llm_that_never_answers_json_dead_letters_and_the_project_finishes(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """fake-llm with --malformed-rate 1: every answer is cut-off JSON. Each attempt re-asks, then
    FailTask; after --max-attempts the task is dead-lettered with the parser's reason, and the
    project still ends DONE with the dead tasks marked."""
    base_url = fake_llm("--malformed-rate", "1")
    _, leader = start_leader("--max-attempts", "2", "--max-reasks", "1")
    runner = start_runner(leader, base_url, "--concurrency", "2", "--no-cache")
    path = tmp_path / "p.json"
    seeds = [{"title": "Write the importer"}, {"title": "Write the exporter"}]
    path.write_text(json.dumps({"name": "Never JSON", "description": "d", "tasks": seeds, "max_depth": 1}))
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    tree = _tree(leader, project_id)
    assert tree["project"]["state"] == "done"
    assert tree["project"]["counts"]["dead"] == 2 and tree["project"]["counts"]["done"] == 0
    for task in tree["tasks"]:
        assert task["status"] == "dead" and task["children"] == []
        assert task["attempts"] == 2
        assert "not valid JSON" in task["last_error"], task["last_error"]
    usage = tree["project"]["usage"]
    assert usage["failures"] == 4  # 2 tasks x 2 attempts, each ended in FailTask
    assert usage["calls"] == 8 and usage["reasks"] == 4  # each attempt: an answer and one re-ask
    assert runner.stderr.count('"decomposition failed"') == 4


@pytest.mark.slow
def test_one_poisoned_branch_dies_and_the_rest_of_the_tree_is_complete(
    procs: list[Proc],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """A scripted LLM that never answers JSON for one seed task only: that branch is dead-lettered
    after --max-attempts, its sibling is decomposed to the depth limit, the project ends DONE."""
    llm = Proc([sys.executable, "-c", SCRIPTED_LLM])
    procs.append(llm)
    base_url = f"http://{llm.address()}/v1"
    _, leader = start_leader("--max-attempts", "3", "--max-reasks", "0")
    start_runner(leader, base_url, "--concurrency", "2", "--no-cache")
    path = tmp_path / "p.json"
    seeds = [{"title": "Build the catalogue"}, {"title": "Build the POISON pill"}, {"title": "Build the cart"}]
    path.write_text(json.dumps({"name": "One bad branch", "description": "d", "tasks": seeds, "max_depth": 2}))
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    tree = _tree(leader, project_id)
    assert tree["project"]["state"] == "done"
    good, poisoned, cart = tree["tasks"]
    assert poisoned["status"] == "dead" and poisoned["attempts"] == 3 and poisoned["children"] == []
    assert "not valid JSON" in poisoned["last_error"]
    for task in (good, cart):
        assert task["status"] == "done" and len(task["children"]) == 2
        for c in task["children"]:
            assert c["status"] == "done" and len(c["children"]) == 2
            assert all(g["stop_reason"] == "max depth reached" for g in c["children"])
    counts = tree["project"]["counts"]
    assert counts["dead"] == 1 and counts["total"] == 3 + 2 * (2 + 4)


@pytest.mark.slow
def test_enormous_answers_are_re_asked_then_dead_lettered_and_everyone_keeps_serving(
    procs: list[Proc],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """A scripted LLM that answers one seed task with 1.2 million characters every time: the runner
    refuses each answer unread (over limits.MAX_ANSWER_CHARS), re-asks with that error (the re-ask
    quotes only the head of the answer, so the endpoint accepts it: its body limit is 1 MiB), then
    fails the attempt; the task is dead-lettered with the limit as its last error, its sibling is
    decomposed, and the leader and the runner go on serving the next project."""
    llm = Proc([sys.executable, "-c", SCRIPTED_LLM])
    procs.append(llm)
    base_url = f"http://{llm.address()}/v1"
    leader_proc, leader = start_leader("--max-attempts", "2", "--max-reasks", "1")
    runner = start_runner(leader, base_url, "--concurrency", "2", "--no-cache")
    path = tmp_path / "p.json"
    seeds = [{"title": "Build the catalogue"}, {"title": "Build the HUGE pile"}]
    path.write_text(json.dumps({"name": "Enormous answers", "description": "d", "tasks": seeds, "max_depth": 1}))
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    tree = _tree(leader, project_id)
    assert tree["project"]["state"] == "done"
    good, huge = tree["tasks"]
    assert good["status"] == "done" and len(good["children"]) == 2
    assert huge["status"] == "dead" and huge["attempts"] == 2 and huge["children"] == []
    limit = f"more than the limit of {limits.MAX_ANSWER_CHARS:,}"
    assert limit in huge["last_error"], huge["last_error"]
    # Each attempt: the answer and one re-ask, both refused for their size (an HTTP 413 on the
    # re-ask would have ended the attempt with another error and no second refusal).
    refusals = [line for line in runner.stderr_lines if '"answer rejected"' in line and limit in line]
    assert len(refusals) == 4, runner.stderr
    assert tree["project"]["usage"]["reasks"] == 2
    assert runner.popen.poll() is None and leader_proc.popen.poll() is None
    path.write_text(json.dumps({"name": "Next", "description": "d", "tasks": seeds[:1], "max_depth": 1}))
    next_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    after = _tree(leader, next_id)
    assert after["project"]["state"] == "done" and after["project"]["counts"]["dead"] == 0
