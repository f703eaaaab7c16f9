"""Deciding one decomposition: prompt, LLM call, validation, re-ask, outcome.

Apart from the worker loop (`loop.py`) so that every caller sends the same LLM request for the same
task: runner processes, the runners `paradecom run` keeps in its own process, and the sequential
fallback (`--runners 0`) all follow the assignment's LlmRequest (messages, schema, fan-out bounds,
re-ask rule), which the leader builds for every runner alike (`prompt.build_request`), so their
requests and their cache keys are the same, and so are their trees. Only an assignment from a
leader that sends no LlmRequest is asked about with a request built here, from the runner's own
`DecompositionSettings`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from paradecom import limits
from paradecom.errors import DecompositionError
from paradecom.logs import get_logger
from paradecom.v1 import task_pb2

from .cache import DecompositionCache, cache_key
from .llm import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    ENV_LLM_TIMEOUT,
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
from .prompt import (
    CONTRACT_VERSION,
    DEFAULT_MAX_REASKS,
    DEFAULT_MAX_SUBTASKS,
    DEFAULT_MIN_SUBTASKS,
    MAX_REASKS_LIMIT,
    RequestSettings,
    build_request,
    reask_messages,
)
from .schema import InvalidAnswer, parse_decomposition

log = get_logger("paradecom.runner")

DEFAULT_MODEL = limits.DEFAULT_MODEL
ENV_MODEL = "PARADECOM_MODEL"


class ChatClient(Protocol):
    """What a decomposition needs of an LLM client; `LLMClient` is the real one, tests pass fakes."""

    async def complete(
        self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, object] | None = None
    ) -> Completion: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class DecompositionSettings:
    """A runner's settings: the model and how the endpoint is called (structured-output mode,
    max_tokens, timeout), which are the runner's own; and the request settings (fan-out bounds,
    re-asks, answer profile) that a leader decides and sends in LlmRequest, used here only for an
    assignment that has none (`request`), and by `paradecom run` for the leader it starts.

    `base_url`: the endpoint, for one this process started (the embedded model); None: the one
    OPENAI_BASE_URL / OPENAI_API_KEY name. `endpoint_id`: what names the endpoint in the cache's
    key when its URL does not (LLMClient); None: $PARADECOM_ENDPOINT_ID, else the URL."""

    model: str = DEFAULT_MODEL
    min_subtasks: int = DEFAULT_MIN_SUBTASKS
    max_subtasks: int = DEFAULT_MAX_SUBTASKS
    max_reasks: int = DEFAULT_MAX_REASKS
    structured_output: str = "auto"
    max_tokens: int = DEFAULT_MAX_TOKENS
    llm_timeout_s: float = DEFAULT_TIMEOUT_S
    answer_profile: str = "full"
    base_url: str | None = None
    endpoint_id: str | None = None

    def __post_init__(self) -> None:
        # RequestSettings checks the fan-out bounds, the re-asks and the answer profile.
        _ = self.request
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"structured_output must be one of {', '.join(STRUCTURED_OUTPUT_MODES)}")

    @property
    def request(self) -> RequestSettings:
        """The settings of the LlmRequest these settings describe."""
        return RequestSettings(self.min_subtasks, self.max_subtasks, self.max_reasks, self.answer_profile)

    @classmethod
    def from_environment(cls, model: str | None = None) -> DecompositionSettings:
        """The settings a runner started with no flags would use: $PARADECOM_MODEL,
        $PARADECOM_MAX_SUBTASKS, $PARADECOM_MAX_REASKS, $PARADECOM_ANSWER_PROFILE,
        $PARADECOM_STRUCTURED_OUTPUT, $PARADECOM_MAX_TOKENS and $PARADECOM_LLM_TIMEOUT where set, else
        the defaults. ConfigError names a variable whose value is not valid."""
        request = RequestSettings.from_environment()
        return cls(
            model=model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL,
            min_subtasks=request.min_subtasks,
            max_subtasks=request.max_subtasks,
            max_reasks=request.max_reasks,
            answer_profile=request.answer_profile,
            structured_output=default_structured_output(),
            max_tokens=int(env_setting(ENV_MAX_TOKENS, int, 1, MAX_TOKENS_LIMIT) or DEFAULT_MAX_TOKENS),
            llm_timeout_s=env_setting(ENV_LLM_TIMEOUT, float, 1.0, MAX_TIMEOUT_S) or DEFAULT_TIMEOUT_S,
        )

    def with_model(self, model: str | None) -> DecompositionSettings:
        return self if not model else replace(self, model=model)

    def llm_client(self) -> LLMClient:
        """An LLMClient for these settings at `base_url`, else at the configured endpoint
        (ConfigError without one)."""
        return LLMClient(
            self.model,
            base_url=self.base_url,
            structured_output=self.structured_output,
            max_subtasks=self.max_subtasks,
            answer_profile=self.answer_profile,
            max_tokens=self.max_tokens,
            timeout=self.llm_timeout_s,
            endpoint_id=self.endpoint_id,
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


class _EarlyCall:
    """A first LLM call made before its task was leased (Decomposer.start_early). The 429s it
    meets are kept until a decomposition claims it, then counted there like its own."""

    def __init__(self, call: Coroutine[object, object, Completion]) -> None:
        self._heard: list[float | None] = []
        self._listener: Callable[[float | None], None] | None = None
        context = contextvars.copy_context()
        context.run(RATE_LIMIT_LISTENER.set, self.rate_limited)
        self.task = asyncio.create_task(call, context=context)

    def rate_limited(self, retry_after: float | None) -> None:
        if self._listener is None:
            self._heard.append(retry_after)
        else:
            self._listener(retry_after)

    def claim(self, listener: Callable[[float | None], None] | None) -> asyncio.Task[Completion]:
        self._listener = listener or (lambda _: None)
        for retry_after in self._heard:
            self._listener(retry_after)
        self._heard.clear()
        return self.task


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
        self._early: dict[str, _EarlyCall] = {}

    @property
    def model(self) -> str:
        return self.settings.model

    def start_early(self, requests: Sequence[task_pb2.LlmRequest]) -> int:
        """Send the first answer's call of each request now, before any task asks for it (the head
        start of a local run, runner/head_start.py); the decomposition of a task whose LlmRequest
        is one of these then waits for that call instead of making its own. Requests already
        answered in the cache, or repeated, are not sent. Returns how many calls went out."""
        started = 0
        for request in requests:
            schema, *_ = _read_request(request)
            messages = _messages(request)
            key = self._key(messages, schema)
            if key in self._early or (self.cache is not None and self.cache.get(key) is not None):
                continue
            self._early[key] = _EarlyCall(self.llm.complete(messages, schema))
            started += 1
        return started

    def _key(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, object]) -> str:
        """The key of what produced an answer: the model, the messages and the answer format."""
        # The answer format (structured-output mode and schema) is part of what produced an answer.
        answer_format = getattr(self.llm, "answer_format", None)
        if isinstance(answer_format, dict):
            answer_format = {**answer_format, "schema": schema}
        return cache_key(self.settings.model, messages, answer_format)

    async def close(self) -> None:
        """Close the LLM client if this Decomposer made it (once); cancel early calls nobody claimed."""
        for early in self._early.values():
            if early.task.done() and not early.task.cancelled():
                early.task.exception()  # read, so that asyncio does not report it as never retrieved
            early.task.cancel()
        self._early.clear()
        if self._owns_llm:
            self._owns_llm = False
            await self.llm.close()

    async def decompose(
        self, assignment: task_pb2.TaskAssignment, usage: task_pb2.Usage | None = None
    ) -> DecompositionOutcome:
        """Ask the LLM to decompose `assignment`'s task; re-ask with the errors up to max_reasks times.
        `usage` (a new one if None) is counted into as calls are made, so a caller that cancels the
        decomposition still knows what it cost (for ReleaseTask).

        Raises only DecompositionFailed (whose `usage` holds what was spent): retryable when the LLM
        was unreachable, kept answering badly or something unexpected went wrong here (another
        attempt, maybe elsewhere, may succeed), not retryable when the endpoint refused the request.
        """
        usage = task_pb2.Usage() if usage is None else usage
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
        request = assignment.llm_request if assignment.HasField("llm_request") else build_request(assignment, s.request)
        schema, min_subtasks, max_subtasks, max_reasks = _read_request(request)
        messages = _messages(request)
        parent_title = assignment.task.title
        key = self._key(messages, schema) if self.cache is not None or self._early else ""
        early = self._early.pop(key, None) if self._early else None
        cached = self.cache.get(key) if self.cache is not None and early is None else None
        if cached is not None:
            try:
                # Salvaged as the answer was when it was stored (the last one may have been).
                outcome = self._outcome(parse_decomposition(cached, parent_title, salvage=True), usage, min_subtasks)
            except InvalidAnswer:
                pass  # written by an older, laxer version: ask the LLM instead
            else:
                usage.cache_hits = 1
                return outcome
        errors: list[str] = []
        answers = max_reasks + 1
        asked = messages
        for answer_number in range(1, answers + 1):
            called = time.monotonic()
            try:
                if early is not None:
                    call, early = early.claim(RATE_LIMIT_LISTENER.get()), None
                    completion = await call
                else:
                    completion = await self.llm.complete(asked, schema)
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
                if len(subtasks) > max_subtasks:
                    raise InvalidAnswer([f"{len(subtasks)} subtasks: give at most {max_subtasks}"])
                if len(subtasks) < min_subtasks and answer_number < answers:
                    # Asked once more before the stop rule makes the task a leaf: small models often
                    # stop after one subtask, and a leaf this early is rarely what the user wants.
                    plural = "" if len(subtasks) == 1 else "s"
                    raise InvalidAnswer(
                        [f"{len(subtasks)} subtask{plural}: give at least {min_subtasks}, each a different part"]
                    )
            except InvalidAnswer as exc:
                errors = exc.errors
                log.info("answer rejected", answer=answer_number, of=answers, errors=errors[:5])
                if answer_number < answers:
                    asked = reask_messages(messages, completion.text, errors, request.reask.template)
                    usage.reasks += 1
                continue
            if self.cache:
                self.cache.put(key, completion.text)
            return self._outcome(subtasks, usage, min_subtasks)
        raise DecompositionFailed(
            clip_error(f"no valid decomposition in {answers} answers; last errors: " + "; ".join(errors)),
            retryable=True,
            usage=usage,
        )

    @staticmethod
    def _outcome(subtasks: list[task_pb2.Subtask], usage: task_pb2.Usage, min_subtasks: int) -> DecompositionOutcome:
        """Apply the stop rule on fan-out: fewer than min_subtasks children make the task a leaf."""
        if len(subtasks) < min_subtasks:
            reason = f"fewer than {min_subtasks} subtasks"
            return DecompositionOutcome(subtasks=[], usage=usage, stop_reason=reason)
        return DecompositionOutcome(subtasks=subtasks, usage=usage)


def _messages(request: task_pb2.LlmRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in request.messages]


def _read_request(request: task_pb2.LlmRequest) -> tuple[dict[str, object], int, int, int]:
    """(answer schema, min_subtasks, max_subtasks, max_reasks) of an LlmRequest; DecompositionError
    (retryable: another runner may implement it) for one this runner cannot follow."""
    if request.version != CONTRACT_VERSION:
        raise DecompositionError(
            f"the leader's LLM request is version {request.version[:100]!r}; this runner follows {CONTRACT_VERSION}",
            retryable=True,
        )
    problems = []
    if not request.messages:
        problems.append("no messages")
    if not 1 <= request.min_subtasks <= request.max_subtasks <= limits.MAX_SUBTASKS:
        problems.append(f"subtask bounds {request.min_subtasks}..{request.max_subtasks}")
    if not 0 <= request.reask.max_reasks <= MAX_REASKS_LIMIT:
        problems.append(f"max_reasks {request.reask.max_reasks}")
    try:
        schema = json.loads(request.answer_schema_json)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        problems.append("answer_schema_json is not a JSON object")
    if problems or not isinstance(schema, dict):
        raise DecompositionError("the leader's LLM request cannot be followed: " + "; ".join(problems), retryable=True)
    return schema, request.min_subtasks, request.max_subtasks, request.reask.max_reasks
