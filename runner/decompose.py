"""Deciding one decomposition: prompt, LLM call, validation, re-ask, outcome.

Apart from the worker loop (`loop.py`) so that every caller sends the same LLM request for the same
task: runner processes, the runners `paradecom run` keeps in its own process, and the sequential
fallback (`--runners 0`) all build a `Decomposer` from the same `DecompositionSettings`, so their
requests (messages, schema, fan-out bounds, re-ask rules, error handling) and their cache keys are
the same, and so are their trees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from paradecom import limits
from paradecom.errors import DecompositionError
from paradecom.v1 import task_pb2

from .cache import DecompositionCache, cache_key
from .llm import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    ENV_LLM_TIMEOUT,
    ENV_MAX_SUBTASKS,
    ENV_MAX_TOKENS,
    MAX_TIMEOUT_S,
    MAX_TOKENS_LIMIT,
    RATE_LIMIT_LISTENER,
    STRUCTURED_OUTPUT_MODES,
    Completion,
    LLMClient,
    default_structured_output,
    env_setting,
)
from .metrics import RunnerMetrics
from .prompt import DEFAULT_MAX_SUBTASKS, DEFAULT_MIN_SUBTASKS, build_messages, reask_messages
from .schema import InvalidAnswer, parse_decomposition

log = structlog.get_logger("paradecom.runner")

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MAX_REASKS = 2
MAX_REASKS_LIMIT = 10
ENV_MODEL = "PARADECOM_MODEL"
ENV_MAX_REASKS = "PARADECOM_MAX_REASKS"


class ChatClient(Protocol):
    """What a decomposition needs of an LLM client; `LLMClient` is the real one, tests pass fakes."""

    async def complete(self, messages: Sequence[Mapping[str, str]]) -> Completion: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class DecompositionSettings:
    """Everything that shapes the LLM request for a task, and so its answer and its cache key."""

    model: str = DEFAULT_MODEL
    min_subtasks: int = DEFAULT_MIN_SUBTASKS
    max_subtasks: int = DEFAULT_MAX_SUBTASKS
    max_reasks: int = DEFAULT_MAX_REASKS
    structured_output: str = "auto"
    max_tokens: int = DEFAULT_MAX_TOKENS
    llm_timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 1 <= self.min_subtasks <= self.max_subtasks <= limits.MAX_SUBTASKS:
            raise ValueError(f"subtask bounds must satisfy 1 <= min <= max <= {limits.MAX_SUBTASKS}")
        if not 0 <= self.max_reasks <= MAX_REASKS_LIMIT:
            raise ValueError(f"max_reasks must be 0 to {MAX_REASKS_LIMIT}, not {self.max_reasks}")
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"structured_output must be one of {', '.join(STRUCTURED_OUTPUT_MODES)}")

    @classmethod
    def from_environment(cls, model: str | None = None) -> DecompositionSettings:
        """The settings a runner started with no flags would use: $PARADECOM_MODEL,
        $PARADECOM_MAX_SUBTASKS, $PARADECOM_MAX_REASKS, $PARADECOM_STRUCTURED_OUTPUT,
        $PARADECOM_MAX_TOKENS and $PARADECOM_LLM_TIMEOUT where set, else the defaults.
        ConfigError names a variable whose value is not valid."""
        max_subtasks = int(env_setting(ENV_MAX_SUBTASKS, int, 1, limits.MAX_SUBTASKS) or DEFAULT_MAX_SUBTASKS)
        reasks = env_setting(ENV_MAX_REASKS, int, 0, MAX_REASKS_LIMIT)
        return cls(
            model=model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL,
            min_subtasks=min(DEFAULT_MIN_SUBTASKS, max_subtasks),
            max_subtasks=max_subtasks,
            max_reasks=DEFAULT_MAX_REASKS if reasks is None else int(reasks),
            structured_output=default_structured_output(),
            max_tokens=int(env_setting(ENV_MAX_TOKENS, int, 1, MAX_TOKENS_LIMIT) or DEFAULT_MAX_TOKENS),
            llm_timeout_s=env_setting(ENV_LLM_TIMEOUT, float, 1.0, MAX_TIMEOUT_S) or DEFAULT_TIMEOUT_S,
        )

    def with_model(self, model: str | None) -> DecompositionSettings:
        return self if not model else replace(self, model=model)

    def llm_client(self) -> LLMClient:
        """An LLMClient for these settings at the configured endpoint (ConfigError without one)."""
        return LLMClient(
            self.model,
            structured_output=self.structured_output,
            max_subtasks=self.max_subtasks,
            max_tokens=self.max_tokens,
            timeout=self.llm_timeout_s,
        )


@dataclass
class DecompositionOutcome:
    """A task's validated subtasks and the LLM usage it took to get them."""

    subtasks: list[task_pb2.Subtask]
    usage: task_pb2.Usage
    stop_reason: str = ""  # set, with no subtasks, when the task is a leaf (the fan-out stop rule)


class DecompositionFailed(DecompositionError):
    """A DecompositionError that carries the LLM usage spent before it, for FailTask's accounting."""

    def __init__(self, message: str, *, retryable: bool, usage: task_pb2.Usage) -> None:
        super().__init__(message, retryable=retryable)
        self.usage = usage


def clip_error(text: str) -> str:
    return text if len(text) <= limits.MAX_ERROR_CHARS else text[: limits.MAX_ERROR_CHARS - 1] + "…"


def _add_usage(usage: task_pb2.Usage, completion: Completion) -> None:
    usage.calls += 1
    usage.prompt_tokens += completion.prompt_tokens
    usage.completion_tokens += completion.completion_tokens


class Decomposer:
    """Decomposes one task at a time (any number concurrently) with one LLM client.

    `llm` defaults to `settings.llm_client()`; a Decomposer closes only a client it made.
    """

    def __init__(
        self,
        settings: DecompositionSettings | None = None,
        *,
        llm: ChatClient | None = None,
        cache: DecompositionCache | None = None,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        self.settings = settings or DecompositionSettings()
        self.cache = cache
        self.metrics = metrics
        self._owns_llm = llm is None
        self.llm: ChatClient = llm if llm is not None else self.settings.llm_client()

    @property
    def model(self) -> str:
        return self.settings.model

    async def close(self) -> None:
        """Close the LLM client if this Decomposer made it (once)."""
        if self._owns_llm:
            self._owns_llm = False
            await self.llm.close()

    async def decompose(self, assignment: task_pb2.TaskAssignment) -> DecompositionOutcome:
        """Ask the LLM to decompose `assignment`'s task; re-ask with the errors up to max_reasks times.

        Raises only DecompositionFailed (whose `usage` holds what was spent): retryable when the LLM
        was unreachable, kept answering badly or something unexpected went wrong here (another
        attempt, maybe elsewhere, may succeed), not retryable when the endpoint refused the request.
        """
        usage = task_pb2.Usage()
        outer = RATE_LIMIT_LISTENER.get()

        def count_rate_limit(retry_after: float | None) -> None:
            usage.rate_limited += 1
            usage.retry_after_ms = max(usage.retry_after_ms, int((retry_after or 0) * 1000))
            if outer is not None:
                outer(retry_after)

        reset = RATE_LIMIT_LISTENER.set(count_rate_limit)
        try:
            return await self._decompose(assignment, usage)
        except DecompositionFailed:
            raise
        except DecompositionError as exc:
            raise DecompositionFailed(str(exc), retryable=exc.retryable, usage=usage) from exc
        except Exception as exc:
            # A bug or a surprise on our side: the task is retried like any transient failure
            # rather than stopping the runner (or the whole sequential run).
            log.exception("decomposition crashed")
            raise DecompositionFailed(clip_error(f"runner error: {exc!r}"), retryable=True, usage=usage) from exc
        finally:
            RATE_LIMIT_LISTENER.reset(reset)
            if self.metrics:
                self.metrics.usage(usage)

    async def _decompose(self, assignment: task_pb2.TaskAssignment, usage: task_pb2.Usage) -> DecompositionOutcome:
        s = self.settings
        messages = build_messages(assignment, s.min_subtasks, s.max_subtasks)
        parent_title = assignment.task.title
        # The answer format (structured-output mode and schema) is part of what produced an answer.
        key = cache_key(s.model, messages, getattr(self.llm, "answer_format", None)) if self.cache else ""
        cached = self.cache.get(key) if self.cache else None
        if cached is not None:
            try:
                # Salvaged as the answer was when it was stored (the last one may have been).
                outcome = self._outcome(parse_decomposition(cached, parent_title, salvage=True), usage)
            except InvalidAnswer:
                pass  # written by an older, laxer version: ask the LLM instead
            else:
                usage.cache_hits = 1
                return outcome
        errors: list[str] = []
        answers = s.max_reasks + 1
        for answer_number in range(1, answers + 1):
            called = time.monotonic()
            try:
                completion = await self.llm.complete(messages)
            finally:
                if self.metrics:
                    self.metrics.llm_call_seconds.observe(time.monotonic() - called)
            _add_usage(usage, completion)
            try:
                if completion.finish_reason == "length":
                    # A cut-off answer may still parse (a fenced or partial object) but would be
                    # missing subtasks, so it is never taken.
                    raise InvalidAnswer(["the answer was cut off at the length limit: write a shorter answer"])
                # The last answer is salvaged rather than refused: what is sound in it beats a task
                # that fails and is tried again with the same prompt (schema.parse_decomposition).
                subtasks = parse_decomposition(completion.text, parent_title, salvage=answer_number == answers)
                if len(subtasks) > s.max_subtasks:
                    raise InvalidAnswer([f"{len(subtasks)} subtasks: give at most {s.max_subtasks}"])
                if len(subtasks) < s.min_subtasks and answer_number < answers:
                    # Asked once more before the stop rule makes the task a leaf: small models often
                    # stop after one subtask, and a leaf this early is rarely what the user wants.
                    plural = "" if len(subtasks) == 1 else "s"
                    raise InvalidAnswer(
                        [f"{len(subtasks)} subtask{plural}: give at least {s.min_subtasks}, each a different part"]
                    )
            except InvalidAnswer as exc:
                errors = exc.errors
                log.info("answer rejected", answer=answer_number, of=answers, errors=errors[:5])
                if answer_number < answers:
                    messages = reask_messages(messages, completion.text, errors)
                    usage.reasks += 1
                continue
            if self.cache:
                self.cache.put(key, completion.text)
            return self._outcome(subtasks, usage)
        raise DecompositionFailed(
            clip_error(f"no valid decomposition in {answers} answers; last errors: " + "; ".join(errors)),
            retryable=True,
            usage=usage,
        )

    def _outcome(self, subtasks: list[task_pb2.Subtask], usage: task_pb2.Usage) -> DecompositionOutcome:
        """Apply the stop rule on fan-out: fewer than min_subtasks children make the task a leaf."""
        if len(subtasks) < self.settings.min_subtasks:
            reason = f"fewer than {self.settings.min_subtasks} subtasks"
            return DecompositionOutcome(subtasks=[], usage=usage, stop_reason=reason)
        return DecompositionOutcome(subtasks=subtasks, usage=usage)
