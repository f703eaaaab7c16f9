"""Unit tests of the runner: answer parsing, prompts, the LLM retry policy, decompose_task against the
real fake-llm process, and the run() loop against an in-process gRPC TaskService on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import httpx2
import openai
import pytest
import structlog
from helpers import Proc, run_cli, wait_for
from structlog.testing import capture_logs

from paradecom import grpc_options, limits
from paradecom.errors import ConfigError, DecompositionError
from paradecom.fakellm import parse_messages
from paradecom.runner.llm import Completion, LLMClient, is_retryable
from paradecom.runner.loop import DecompositionFailed, DecompositionRunner
from paradecom.runner.main import main
from paradecom.runner.prompt import REASK_TEMPLATE, build_messages, reask_messages
from paradecom.runner.request_pacer import RequestPacer, parse_duration
from paradecom.runner.schema import InvalidAnswer, parse_decomposition
from paradecom.v1 import project_pb2, task_pb2, task_service_pb2, task_service_pb2_grpc

# --- shared builders --------------------------------------------------------------------------


def child(key: str, title: str, depends_on: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """One well-formed subtask of an answer."""
    return {
        "key": key,
        "title": title,
        "description": f"All of {title.lower()}.",
        "acceptance_criteria": [f"{title} is reviewed"],
        "depends_on": list(depends_on),
        "atomic": True,
        "atomic_reason": "One person, one day.",
        "estimate_hours": 4,
        **extra,
    }


def answer_for(title: str) -> dict[str, Any]:
    """A valid two-child answer for the task titled `title`."""
    return {
        "subtasks": [
            child("1", f"Design {title}"),
            child("2", f"Implement {title}", depends_on=["1"]),
        ]
    }


def make_assignment(
    n: int = 1, *, timeout_ms: int = 300, depth: int = 0, max_depth: int = 3
) -> task_pb2.TaskAssignment:
    """Task number `n` under lease token tok<n>."""
    return task_pb2.TaskAssignment(
        lease=task_pb2.Lease(task_id=f"t{n}", attempt=1, token=f"tok{n}", timeout_ms=timeout_ms),
        project_id="p1",
        project=project_pb2.ProjectDefinition(
            name="Web shop",
            description="An online shop for used books.",
            goals=["Sell books online"],
            constraints=["Python only"],
        ),
        task=project_pb2.TaskSpec(
            title=f"Build part {n}", description="The whole part.", acceptance_criteria=["It ships"]
        ),
        ancestors=[project_pb2.TaskSpec(title="Build the web shop")] if depth else [],
        sibling_titles=["Write the docs"],
        depth=depth,
        max_depth=max_depth,
    )


def task_title(messages: Sequence[Mapping[str, str]]) -> str:
    """The title in the task line of the last user message that has one (as fake-llm reads it)."""
    title, _depth, found = parse_messages([dict(m) for m in messages])
    return title if found else ""


class FakeChat:
    """An in-process ChatClient: answers from a function of the prompt, optionally slow, gated or
    failing, and counts calls in flight."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        gate: asyncio.Event | None = None,
        error: BaseException | None = None,
        answers: Callable[[int, str], tuple[str, str]] | None = None,
    ) -> None:
        self.delay = delay
        self.gate = gate
        self.error = error
        # (call number, task title) -> (text, finish_reason)
        self.answers = answers or (lambda _n, title: (json.dumps(answer_for(title)), "stop"))
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.prompts: list[list[dict[str, str]]] = []

    async def complete(
        self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, object] | None = None
    ) -> Completion:
        self.calls += 1
        number = self.calls
        self.prompts.append([dict(m) for m in messages])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            text, finish = self.answers(number, task_title(messages))
            return Completion(text=text, finish_reason=finish, prompt_tokens=100, completion_tokens=50)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None


async def eventually(condition: Callable[[], object], within: float = 10.0, what: str = "") -> None:
    """Poll `condition` on the event loop until it holds; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or condition}")
        await asyncio.sleep(0.01)


# --- parse_decomposition --------------------------------------------------------------------------


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
    return info.value.errors


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


# --- prompts ---------------------------------------------------------------------------------------


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


# --- the LLM client --------------------------------------------------------------------------------

_REQUEST = httpx2.Request("POST", "http://llm.invalid/v1/chat/completions")


def status_error(status: int, headers: dict[str, str] | None = None, body: object = None) -> openai.APIStatusError:
    """The error the openai client raises for an HTTP `status` answer."""
    response = httpx2.Response(status, headers=headers or {}, request=_REQUEST)
    return openai.APIStatusError(f"HTTP {status}", response=response, body=body)


def _in_seconds(seconds: int) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize(
    ("exc", "retryable", "delay"),
    [
        (status_error(408), True, None),
        (status_error(409), True, None),
        (status_error(429), True, None),
        (status_error(429, {"retry-after": "3"}), True, 3.0),
        (status_error(429, {"retry-after-ms": "1500"}), True, 1.5),
        (status_error(429, body={"code": "insufficient_quota"}), False, None),
        (status_error(500), True, None),
        (status_error(503, {"retry-after": "2"}), True, 2.0),
        (status_error(500, {"x-should-retry": "false"}), False, None),
        (status_error(400, {"x-should-retry": "true"}), True, None),
        (status_error(400), False, None),
        (status_error(401), False, None),
        (status_error(403), False, None),
        (status_error(404), False, None),
        (status_error(422), False, None),
        (openai.APIConnectionError(request=_REQUEST), True, None),
        (openai.APITimeoutError(request=_REQUEST), True, None),
        (TimeoutError(), True, None),
        (ValueError("bug"), False, None),
    ],
)
def test_is_retryable_table(exc: BaseException, retryable: bool, delay: float | None) -> None:
    """Status codes, headers and connection errors map to (retryable, server-requested delay)."""
    assert is_retryable(exc) == (retryable, delay)


def test_is_retryable_reads_http_date_retry_after() -> None:
    """A Retry-After given as an HTTP date becomes the seconds until then."""
    retryable, delay = is_retryable(status_error(503, {"retry-after": _in_seconds(30)}))
    assert retryable and delay is not None and 25 <= delay <= 31


def completion_body(content: str = '{"subtasks": []}', finish_reason: str = "stop") -> dict[str, Any]:
    """A chat.completion response body."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
    }


def scripted_llm(responses: list[httpx2.Response], **kwargs: Any) -> tuple[LLMClient, list[httpx2.Request]]:
    """An LLMClient whose HTTP answers are `responses` in order (the last repeats), through the
    real openai client; also the list the requests it sent are appended to."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    client = openai.AsyncOpenAI(
        api_key="test",
        base_url="http://llm.invalid/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    return LLMClient("m", client=client, backoff_base=0.001, backoff_max=0.01, **kwargs), seen


def complete_once(llm: LLMClient) -> Completion:
    """One completion of a trivial prompt; the client is closed afterwards."""

    async def go() -> Completion:
        try:
            return await llm.complete([{"role": "user", "content": "hi"}])
        finally:
            await llm.close()

    return asyncio.run(go())


def test_complete_retries_transient_errors_then_succeeds() -> None:
    """503 and 429 (Retry-After: 0) are retried; the answer, finish reason and usage come back, and
    the request asks for schema-constrained JSON at temperature 0.2."""
    llm, seen = scripted_llm(
        [
            httpx2.Response(503, json={"error": {"message": "busy"}}),
            httpx2.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}}),
            httpx2.Response(200, json=completion_body("{}")),
        ]
    )
    completion = complete_once(llm)
    assert completion == Completion(text="{}", finish_reason="stop", prompt_tokens=11, completion_tokens=22)
    assert len(seen) == 3
    body = json.loads(seen[-1].content)
    assert body["response_format"]["type"] == "json_schema", "auto tries strict structured output first"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 2000 and body["model"] == "m"


def test_complete_gives_up_as_retryable_after_max_attempts() -> None:
    """A server that keeps failing costs exactly max_attempts requests, then a retryable error."""
    llm, seen = scripted_llm([httpx2.Response(500, json={"error": {"message": "down"}})], max_attempts=3)
    with pytest.raises(DecompositionError) as info:
        complete_once(llm)
    assert info.value.retryable and len(seen) == 3
    assert "500" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_complete_does_not_retry_client_errors(status: int) -> None:
    """A request the endpoint refuses is not retried and is not retryable."""
    llm, seen = scripted_llm([httpx2.Response(status, json={"error": {"message": "no"}})])
    with pytest.raises(DecompositionError) as info:
        complete_once(llm)
    assert not info.value.retryable and len(seen) == 1


def test_complete_fails_fast_on_long_retry_after() -> None:
    """A Retry-After longer than the runner will wait ends the attempt at once, retryable."""
    llm, seen = scripted_llm([httpx2.Response(429, headers={"retry-after": "3600"}, json={})])
    with pytest.raises(DecompositionError) as info:
        complete_once(llm)
    assert info.value.retryable and len(seen) == 1


def test_complete_surprise_errors_are_left_to_the_leader(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is no answer from the endpoint (a bug, an unreadable reply) is not retried
    locally but is reported retryable, so the leader tries the task again."""
    llm, _ = scripted_llm([httpx2.Response(200, json=completion_body())])
    attempts: list[int] = []

    async def broken(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Completion:
        attempts.append(1)
        raise KeyError("choices")

    monkeypatch.setattr(llm, "_create", broken)
    with capture_logs(), pytest.raises(DecompositionError) as info:
        complete_once(llm)
    assert info.value.retryable and "KeyError" in str(info.value)
    assert len(attempts) == 1


def test_llm_client_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint at all is a ConfigError naming OPENAI_BASE_URL; a base URL alone needs no key."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        LLMClient("m")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    llm = LLMClient("m")
    assert llm.base_url == "http://127.0.0.1:9/v1/"
    assert llm._client.api_key == "unused"
    assert llm._client.max_retries == 0


# --- decompose_task with an in-process fake ----------------------------------------------------


def test_decompose_task_reasks_after_truncated_answer() -> None:
    """finish_reason "length" counts as invalid even if it parses; the re-ask says it was cut off."""
    chat = FakeChat(
        answers=lambda n, title: (json.dumps(answer_for(title)), "length" if n == 1 else "stop"),
    )
    runner = DecompositionRunner("127.0.0.1:1", model="m", llm=chat)
    outcome = asyncio.run(runner.decompose_task(make_assignment()))
    assert [s.key for s in outcome.subtasks] == ["1", "2"]
    assert (outcome.usage.calls, outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (
        2,
        200,
        100,
    )
    assert "cut off" in chat.prompts[1][-1]["content"]


def test_decompose_task_fails_after_max_reasks_with_usage() -> None:
    """An LLM that never answers validly gets max_reasks re-asks, then a retryable error carrying
    the usage of every call."""
    chat = FakeChat(answers=lambda _n, _title: ("not json", "stop"))
    runner = DecompositionRunner("127.0.0.1:1", model="m", llm=chat, max_reasks=2)
    with pytest.raises(DecompositionFailed) as info:
        asyncio.run(runner.decompose_task(make_assignment()))
    assert info.value.retryable
    assert info.value.usage.calls == 3 and chat.calls == 3
    assert "not valid JSON" in str(info.value)


def test_decompose_task_salvages_the_last_answer_only() -> None:
    """An answer that repeats the parent's title in one child is refused and re-asked with the
    reason; once the re-asks are spent, the last answer is salvaged (the repeat left out) instead
    of failing the task."""

    def answers(_n: int, title: str) -> tuple[str, str]:
        return json.dumps(
            {"subtasks": [child("1", title), child("2", f"Design {title}"), child("3", f"Test {title}")]}
        ), "stop"

    chat = FakeChat(answers=answers)
    runner = DecompositionRunner("127.0.0.1:1", model="m", llm=chat, max_reasks=1)
    outcome = asyncio.run(runner.decompose_task(make_assignment(3)))
    assert [s.title for s in outcome.subtasks] == ["Design Build part 3", "Test Build part 3"]
    assert chat.calls == 2 and outcome.usage.reasks == 1
    assert "- subtask 1: repeats its parent's title" in chat.prompts[1][-1]["content"]


def test_decompose_task_passes_llm_errors_on_with_usage() -> None:
    """An endpoint error keeps its retryable flag and carries the (empty) usage."""
    chat = FakeChat(error=DecompositionError("LLM request failed: HTTP 401", retryable=False))
    runner = DecompositionRunner("127.0.0.1:1", model="m", llm=chat)
    with pytest.raises(DecompositionError) as info:
        asyncio.run(runner.decompose_task(make_assignment()))
    assert not info.value.retryable
    assert isinstance(info.value, DecompositionFailed) and info.value.usage.calls == 0


def test_sequential_fallback_retries_an_unexpected_error_like_a_runner() -> None:
    """A surprise (a bug-like exception) in one decomposition is a retryable failure, as in a runner:
    the sequential run retries the task and finishes instead of stopping."""
    from paradecom.project import ProjectDefinition
    from paradecom.runner.decompose import Decomposer, DecompositionSettings
    from paradecom.sequential import decompose_sequentially

    class Flaky(FakeChat):
        async def complete(
            self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, object] | None = None
        ) -> Completion:
            if self.calls == 0:
                self.calls += 1
                raise RuntimeError("surprise")
            return await super().complete(messages, schema)

    decomposer = Decomposer(DecompositionSettings(model="m"), llm=Flaky())
    project = ProjectDefinition(name="Shop", description="Sell things.", max_depth=1)
    tree = asyncio.run(decompose_sequentially(project, decomposer, max_attempts=3))
    root = tree.tasks[0]
    assert tree.project["state"] == "done" and root.status == "done" and root.attempts == 2
    assert len(root.children) == 2


# --- decompose_task against the real fake-llm process --------------------------------------------


@contextlib.contextmanager
def fake_llm(*flags: str) -> Iterator[str]:
    """A fake-llm process; yields its base URL."""
    proc = Proc([sys.executable, "-m", "paradecom.fakellm", "--listen", "127.0.0.1:0", *flags])
    try:
        yield f"http://{proc.address()}/v1"
    finally:
        proc.stop()


def fake_llm_stats(base_url: str) -> dict[str, Any]:
    """The fake-llm's /stats counters."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def decompose_all(base_url: str, count: int, **runner_kwargs: Any) -> list[task_pb2.Usage]:
    """Decompose `count` tasks one after another through the real openai client; their usages."""

    async def go() -> list[task_pb2.Usage]:
        llm = LLMClient("fake-llm", base_url=base_url, backoff_base=0.01, backoff_max=0.05, max_attempts=10)
        runner = DecompositionRunner("127.0.0.1:1", model="fake-llm", llm=llm, **runner_kwargs)
        usages = []
        try:
            for n in range(1, count + 1):
                outcome = await runner.decompose_task(make_assignment(n, depth=1, max_depth=3))
                assert len(outcome.subtasks) == 4
                assert all(s.title and s.key for s in outcome.subtasks)
                usages.append(outcome.usage)
        finally:
            await llm.close()
        return usages

    return asyncio.run(go())


def test_decompose_task_against_fake_llm() -> None:
    """Through the real openai client and the fake-llm server, each task takes one call and yields
    --fanout valid children, atomic at --atomic-depth."""
    with fake_llm("--fanout", "4", "--atomic-depth", "2") as base_url:
        usages = decompose_all(base_url, 3)
        assert [u.calls for u in usages] == [1, 1, 1]
        assert all(u.prompt_tokens > 0 and u.completion_tokens > 0 for u in usages)
        assert fake_llm_stats(base_url)["ok"] == 3


def test_decompose_task_reasks_malformed_answers_from_fake_llm() -> None:
    """With half of the answers malformed, re-asks happen, every task still ends valid, and each
    malformed answer cost exactly one re-ask."""
    with fake_llm("--fanout", "4", "--malformed-rate", "0.5", "--seed", "7") as base_url:
        usages = decompose_all(base_url, 8, max_reasks=8)
        stats = fake_llm_stats(base_url)
    calls = sum(u.calls for u in usages)
    assert calls > 8, "the seed should have produced malformed answers"
    assert stats["malformed"] == calls - 8 and stats["ok"] == 8


def test_decompose_task_retries_fake_llm_faults() -> None:
    """Injected 500s and 429s (Retry-After: 1) are retried by our policy; every task succeeds."""
    with fake_llm("--fanout", "4", "--error-rate", "0.3", "--rate-limit-rate", "0.15", "--seed", "3") as base_url:
        usages = decompose_all(base_url, 5)
        stats = fake_llm_stats(base_url)
    assert [u.calls for u in usages] == [1] * 5
    assert stats["errors"] + stats["rate_limited"] > 0 and stats["ok"] == 5


# --- run() against an in-process TaskService --------------------------------------------------------


class FakeLeader(task_service_pb2_grpc.TaskServiceServicer):
    """A scripted TaskService: streams whatever is put in `outbox` (None ends the stream) and
    records every call."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[task_service_pb2.PullTaskResponse | None] = asyncio.Queue()
        self.pulls: list[task_service_pb2.PullTaskRequest] = []
        self.streams_cancelled = 0
        self.extends: list[task_service_pb2.ExtendLeaseRequest] = []
        self.extend_errors: list[grpc.StatusCode] = []
        self.extend_cancelled = False
        self.extend_code: grpc.StatusCode | None = None
        self.submit_calls = 0
        self.submit_errors: list[grpc.StatusCode] = []
        self.submits: list[task_service_pb2.SubmitResultRequest] = []
        self.fails: list[task_service_pb2.FailTaskRequest] = []
        self.releases: list[task_service_pb2.ReleaseTaskRequest] = []

    async def PullTask(  # type: ignore[override]
        self, request: task_service_pb2.PullTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[task_service_pb2.PullTaskResponse]:
        self.pulls.append(request)
        try:
            while True:
                item = await self.outbox.get()
                if item is None:
                    return
                yield item
        except asyncio.CancelledError:
            self.streams_cancelled += 1
            raise

    async def ExtendLease(  # type: ignore[override]
        self, request: task_service_pb2.ExtendLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.ExtendLeaseResponse:
        self.extends.append(request)
        if self.extend_errors:
            await context.abort(self.extend_errors.pop(0), "leader restarting")
        if self.extend_code is not None:
            await context.abort(self.extend_code, "lease is gone")
        return task_service_pb2.ExtendLeaseResponse(
            expires_at_unix_ms=int(time.time() * 1000) + 300, cancelled=self.extend_cancelled
        )

    async def SubmitResult(  # type: ignore[override]
        self, request: task_service_pb2.SubmitResultRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.SubmitResultResponse:
        self.submit_calls += 1
        if self.submit_errors:
            await context.abort(self.submit_errors.pop(0), "not now")
        self.submits.append(request)
        return task_service_pb2.SubmitResultResponse(children_queued=len(request.subtasks))

    async def FailTask(  # type: ignore[override]
        self, request: task_service_pb2.FailTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.FailTaskResponse:
        self.fails.append(request)
        return task_service_pb2.FailTaskResponse(status=project_pb2.TASK_STATUS_QUEUED)

    async def ReleaseTask(  # type: ignore[override]
        self, request: task_service_pb2.ReleaseTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> task_service_pb2.ReleaseTaskResponse:
        self.releases.append(request)
        return task_service_pb2.ReleaseTaskResponse()

    def assign(self, *numbers: int, timeout_ms: int = 300) -> None:
        """Queue assignments of tasks `numbers` on the stream."""
        for n in numbers:
            self.outbox.put_nowait(
                task_service_pb2.PullTaskResponse(assignment=make_assignment(n, timeout_ms=timeout_ms))
            )

    def extends_of(self, token: str) -> int:
        """Heartbeats received for lease `token`."""
        return sum(1 for e in self.extends if e.lease_token == token)


@contextlib.asynccontextmanager
async def serving(leader: FakeLeader, port: int = 0) -> AsyncIterator[str]:
    """`leader` served on 127.0.0.1:`port`; yields HOST:PORT."""
    server = grpc.aio.server(options=grpc_options.SERVER_OPTIONS)
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(leader, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{bound}"
    finally:
        await server.stop(None)


async def stop_runner(runner: DecompositionRunner, run: asyncio.Task[None]) -> None:
    """request_stop() and wait (10 s at most) for run() to return."""
    runner.request_stop()
    await asyncio.wait_for(run, 10.0)


def run_scenario(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an async test body on a fresh event loop."""
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_run_submits_results_within_concurrency_and_heartbeats() -> None:
    """Five tasks pushed at once to a runner with concurrency 2: it asks for max_in_flight 2, never
    has more than 2 LLM calls in flight, heartbeats every lease (300 ms timeout) while it waits or
    works, and submits each result under its own lease token; each task's log lines carry its ids."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(delay=0.4)
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", runner_id="runner-a", llm=chat)
            leader.assign(1, 2, 3, 4, 5)
            with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                run = asyncio.create_task(runner.run())
                await eventually(lambda: len(leader.submits) == 5, what="five results")
                await stop_runner(runner, run)
        assert [(p.runner_id, p.max_in_flight) for p in leader.pulls] == [("runner-a", 2)]
        assert chat.max_in_flight == 2
        assert {(s.task_id, s.lease_token) for s in leader.submits} == {(f"t{n}", f"tok{n}") for n in range(1, 6)}
        for s in leader.submits:
            assert [c.key for c in s.subtasks] == ["1", "2"]
            assert (s.usage.calls, s.usage.prompt_tokens, s.usage.completion_tokens) == (1, 100, 50)
        # Every lease lived at least 400 ms at a 100 ms heartbeat pace; the last ones waited for a slot.
        assert all(leader.extends_of(f"tok{n}") >= 2 for n in range(1, 6))
        assert leader.extends_of("tok5") > leader.extends_of("tok1")
        assert leader.releases == [] and leader.fails == []
        submitted = [e for e in logs if e["event"] == "result submitted"]
        assert {(e["project_id"], e["task_id"], e["attempt"]) for e in submitted} == {
            ("p1", f"t{n}", 1) for n in range(1, 6)
        }

    run_scenario(scenario)


def test_request_stop_releases_unfinished_tasks() -> None:
    """On stop the runner cancels its stream, waits drain_timeout for tasks that never finish, then
    cancels them and releases each lease with the shutdown reason; nothing is submitted."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(gate=asyncio.Event())  # never opened: the LLM never answers
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", llm=chat, drain_timeout=0.3)
            leader.assign(1, 2, 3)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: chat.calls == 2 and leader.extends_of("tok3") >= 1, what="three leases held")
            started = time.monotonic()
            await stop_runner(runner, run)
            assert time.monotonic() - started >= 0.3
            await eventually(lambda: leader.streams_cancelled == 1, what="the stream to be cancelled")
        assert sorted(r.lease_token for r in leader.releases) == ["tok1", "tok2", "tok3"]
        assert {r.reason for r in leader.releases} == {"runner shutting down"}
        assert chat.cancelled == 2
        assert leader.submits == [] and leader.fails == []

    run_scenario(scenario)


def test_request_stop_lets_running_tasks_finish_and_takes_no_more() -> None:
    """A task in progress at stop keeps heartbeating and is submitted normally within the drain
    timeout; work queued after the stop is never pulled."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(delay=0.6)
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", llm=chat, drain_timeout=10)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: chat.calls == 1, what="the task to start")
            runner.request_stop()
            await eventually(lambda: leader.streams_cancelled == 1, what="the stream to be cancelled")
            leader.assign(2)
            await asyncio.wait_for(run, 10)
        assert [s.lease_token for s in leader.submits] == ["tok1"]
        assert leader.extends_of("tok1") >= 2
        assert leader.releases == [] and len(leader.pulls) == 1
        assert leader.outbox.qsize() == 1 and chat.calls == 1

    run_scenario(scenario)


@pytest.mark.parametrize(
    "lost",
    ["cancelled", grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION],
    ids=["cancelled", "aborted", "not-found", "failed-precondition"],
)
def test_lost_lease_abandons_the_work(lost: str | grpc.StatusCode) -> None:
    """When a heartbeat says the project was cancelled or the lease is stale, the LLM call is
    cancelled and nothing is submitted, failed or released."""

    async def scenario() -> None:
        leader = FakeLeader()
        if lost == "cancelled":
            leader.extend_cancelled = True
        else:
            assert isinstance(lost, grpc.StatusCode)
            leader.extend_code = lost
        chat = FakeChat(gate=asyncio.Event())
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: chat.cancelled == 1, what="the LLM call to be cancelled")
            await stop_runner(runner, run)
        assert leader.extends_of("tok1") == 1
        assert leader.submits == [] and leader.fails == [] and leader.releases == []

    run_scenario(scenario)


def test_unavailable_heartbeat_is_retried_at_next_tick() -> None:
    """UNAVAILABLE heartbeats (a restarting leader) do not abandon the task; it is still submitted."""

    async def scenario() -> None:
        leader = FakeLeader()
        leader.extend_errors = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
        chat = FakeChat(delay=0.5)
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: len(leader.submits) == 1, what="the result")
            await stop_runner(runner, run)
        assert leader.extends_of("tok1") >= 3 and chat.cancelled == 0

    run_scenario(scenario)


def test_decomposition_error_is_reported_with_fail_task() -> None:
    """A task the LLM cannot decompose is reported by FailTask with its error, retryable flag and
    usage; invalid answers count their calls."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(answers=lambda _n, _t: ('{"subtasks": []}', "stop"))
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat, max_reasks=1)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: len(leader.fails) == 1, what="the failure report")
            await stop_runner(runner, run)
        (fail,) = leader.fails
        assert (fail.task_id, fail.lease_token, fail.retryable) == ("t1", "tok1", True)
        assert "no subtasks" in fail.error and fail.usage.calls == 2
        assert leader.submits == []

    run_scenario(scenario)


def test_non_retryable_llm_error_is_failed_as_not_retryable() -> None:
    """An endpoint refusal (401) reaches FailTask with retryable=False."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(error=DecompositionError("LLM request failed: HTTP 401: bad key", retryable=False))
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat)
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: len(leader.fails) == 1, what="the failure report")
            await stop_runner(runner, run)
        assert not leader.fails[0].retryable and "401" in leader.fails[0].error

    run_scenario(scenario)


def test_submit_retries_unavailable_and_drops_aborted() -> None:
    """SubmitResult is retried on UNAVAILABLE / DEADLINE_EXCEEDED until accepted; a refusal with
    ABORTED is dropped at once and the lease is not released at shutdown."""

    async def scenario() -> None:
        leader = FakeLeader()
        leader.submit_errors = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=FakeChat())
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: len(leader.submits) == 1, what="the accepted result")
            assert leader.submit_calls == 3
            leader.submit_errors = [grpc.StatusCode.ABORTED]
            leader.assign(2)
            await eventually(lambda: leader.submit_calls == 4, what="the refused result")
            await stop_runner(runner, run)
        assert [s.lease_token for s in leader.submits] == ["tok1"]
        assert leader.submit_calls == 4 and leader.releases == []

    run_scenario(scenario)


def test_a_result_refused_as_invalid_is_reported_with_fail_task() -> None:
    """A result the leader refuses with INVALID_ARGUMENT leaves the lease ours (task_service.proto):
    the runner reports it at once with FailTask (retryable, the refusal as the error, the attempt's
    usage) instead of leaving the lease to expire."""

    async def scenario() -> None:
        leader = FakeLeader()
        leader.submit_errors = [grpc.StatusCode.INVALID_ARGUMENT]
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=FakeChat())
            leader.assign(1)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: len(leader.fails) == 1, what="the failure report")
            await stop_runner(runner, run)
        (fail,) = leader.fails
        assert fail.lease_token == "tok1" and fail.retryable
        assert fail.error == "the leader refused the result: not now" and fail.usage.calls == 1
        assert leader.submits == [] and leader.releases == []

    run_scenario(scenario)


def test_release_at_shutdown_carries_the_usage_spent() -> None:
    """A task given back at shutdown is released with the LLM usage its decomposition has spent so
    far (ReleaseTaskRequest.usage), so the project's accounting loses nothing."""

    async def scenario() -> None:
        leader = FakeLeader()
        chat = FakeChat(delay=0.05, answers=lambda _n, _t: ("not JSON", "stop"))
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=1, model="m", llm=chat, max_reasks=10)
            leader.assign(1, timeout_ms=5_000)
            run = asyncio.create_task(runner.run())
            await eventually(lambda: chat.calls >= 3, what="a few answers")
            runner.request_stop()
            runner.request_stop()
            await asyncio.wait_for(run, 10.0)
        (release,) = leader.releases
        assert release.lease_token == "tok1" and release.usage.calls >= 2 and release.usage.reasks >= 1
        assert release.usage.prompt_tokens == 100 * release.usage.calls

    run_scenario(scenario)


def test_reconnects_after_drain_and_stream_end() -> None:
    """A drain notice or an ended stream makes the runner reconnect, and work on the new stream
    is done; tasks in hand carry on across the reconnect."""

    async def scenario() -> None:
        leader = FakeLeader()
        async with serving(leader) as address:
            runner = DecompositionRunner(address, concurrency=2, model="m", llm=FakeChat(delay=0.3))
            leader.assign(1)
            leader.outbox.put_nowait(
                task_service_pb2.PullTaskResponse(drain=task_service_pb2.DrainNotice(reason="bye"))
            )
            run = asyncio.create_task(runner.run())
            await eventually(lambda: len(leader.pulls) == 2, what="a reconnect after the drain")
            leader.outbox.put_nowait(None)
            await eventually(lambda: len(leader.pulls) == 3, what="a reconnect after the stream ended")
            leader.assign(2)
            await eventually(lambda: len(leader.submits) == 2, what="both results")
            await stop_runner(runner, run)
        assert sorted(s.lease_token for s in leader.submits) == ["tok1", "tok2"]

    run_scenario(scenario)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_waits_for_a_leader_that_is_not_up_yet() -> None:
    """A runner started before its leader retries with backoff and takes work once it is up."""

    async def scenario() -> None:
        port = _free_port()
        leader = FakeLeader()
        runner = DecompositionRunner(f"127.0.0.1:{port}", concurrency=1, model="m", llm=FakeChat())
        with capture_logs() as logs:
            run = asyncio.create_task(runner.run())
            await eventually(
                lambda: sum(e["event"] == "reconnecting to the leader" for e in logs) >= 2,
                what="reconnect attempts",
            )
            leader.assign(1)
            async with serving(leader, port):
                await eventually(lambda: len(leader.submits) == 1, what="the result")
                await stop_runner(runner, run)

    run_scenario(scenario)


# --- the CLI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --leader"),
        (["--leader", "nowhere"], "argument --leader: 'nowhere' is not HOST:PORT"),
        (
            ["--leader", "h:1", "--concurrency", "0"],
            "argument --concurrency: 0 is out of range: a whole number from 1 to 1024",
        ),
        (
            ["--leader", "h:1", "--concurrency", "2000"],
            "argument --concurrency: 2000 is out of range: a whole number from 1 to 1024",
        ),
        (
            ["--leader", "h:1", "--max-reasks", "11"],
            "argument --max-reasks: 11 is out of range: a whole number from 0 to 10",
        ),
        (
            ["--leader", "h:1", "--drain-timeout", "-1"],
            "argument --drain-timeout: -1 is out of range: a number from 0 to 3600",
        ),
        (["--leader", "h:1", "--log-format", "xml"], "argument --log-format: invalid choice"),
        (["--leader", "h:1", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_rejects_bad_flags_in_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag is one `paradecom-runner: error:` line on stderr and exit 2, no usage dump."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"paradecom-runner: error: {message}")


def test_cli_without_endpoint_is_a_config_error() -> None:
    """Without OPENAI_BASE_URL or OPENAI_API_KEY the runner says what to set, in one line, exit 2."""
    result = run_cli(
        [sys.executable, "-m", "paradecom.runner.main", "--leader", "127.0.0.1:1"],
        env={"OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "paradecom-runner: error: no LLM endpoint: set OPENAI_BASE_URL (and OPENAI_API_KEY for hosted endpoints)"
    ]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_cli_stops_cleanly_on_signal(sig: str) -> None:
    """The runner process, waiting for an unreachable leader, exits 0 on SIGTERM or SIGINT and
    never logs the API key."""
    import signal

    proc = Proc(
        [
            sys.executable,
            "-m",
            "paradecom.runner.main",
            "--leader",
            f"127.0.0.1:{_free_port()}",
            "--log-format",
            "json",
        ],
        env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test-secret-value"},
    )
    try:
        wait_for(lambda: "reconnecting to the leader" in proc.stderr, timeout=30, what="the runner to start")
        proc.signal(getattr(signal, sig))
        assert proc.wait(30) == 0
        assert "runner stopped" in proc.stderr
        assert "sk-test-secret-value" not in proc.stderr
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("250ms", 0.25), ("2.5", 2.5), ("", None),
     ("soon", None), ("1x", None), ("-1s", None), ("nan", None), ("1s junk", None)],
)  # fmt: skip
def test_rate_limit_reset_durations_parse_as_openai_writes_them(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_pacer_holds_calls_while_the_stated_budget_is_spent() -> None:
    """An answer saying 1 request is left lets one more go and holds the next until its reset;
    after the reset one call probes while the others wait for its answer."""

    async def scenario() -> list[str]:
        pacer = RequestPacer()
        first = await pacer.acquire()
        await pacer.learn(first, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "300ms"})
        await pacer.acquire()  # the one left
        events: list[str] = []

        async def call(name: str) -> None:
            number = await pacer.acquire()
            events.append(f"{name} sent")
            await pacer.learn(number, {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"})

        waiting = [asyncio.create_task(call(n)) for n in ("a", "b", "c")]
        for _ in range(20):  # every call gets its turns on the loop: none may pass before the reset
            await asyncio.sleep(0)
        events.append("before reset")
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        return events

    events = asyncio.run(scenario())
    assert events[0] == "before reset" and sorted(events[1:]) == ["a sent", "b sent", "c sent"]
