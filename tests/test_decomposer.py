"""decompose_task: one task's decomposition (prompt, LLM call, validation, re-ask, outcome), with an
in-process fake chat and against the real fake-llm process; and the sequential fallback's retry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from helpers import Proc
from runner_fakes import FakeChat, answer_for, child, make_assignment

from paradecom.errors import DecompositionError
from paradecom.runner.llm import Completion, LLMClient
from paradecom.runner.loop import DecompositionFailed, DecompositionRunner
from paradecom.v1 import task_pb2

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
    from paradecom.client.sequential import decompose_sequentially
    from paradecom.project import ProjectDefinition
    from paradecom.runner.decompose import Decomposer, DecompositionSettings

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
    proc = Proc([sys.executable, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", *flags])
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


@pytest.mark.slow
def test_decompose_task_against_fake_llm() -> None:
    """Through the real openai client and the fake-llm server, each task takes one call and yields
    --fanout valid children, atomic at --atomic-depth."""
    with fake_llm("--fanout", "4", "--atomic-depth", "2") as base_url:
        usages = decompose_all(base_url, 3)
        assert [u.calls for u in usages] == [1, 1, 1]
        assert all(u.prompt_tokens > 0 and u.completion_tokens > 0 for u in usages)
        assert fake_llm_stats(base_url)["ok"] == 3


@pytest.mark.slow
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
