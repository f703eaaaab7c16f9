"""Shared fakes of the runner's unit tests: well-formed answers, task assignments, and FakeChat (an
in-process ChatClient). Used by test_answer_parsing, test_prompts, test_decomposer, test_runner_loop,
test_head_start and test_structured_output."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from paradecom.devtools.fakellm import parse_messages
from paradecom.runner.llm import Completion
from paradecom.v1 import project_pb2, task_pb2


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
