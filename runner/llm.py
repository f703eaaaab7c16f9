"""The runner's one door to an LLM: `openai.AsyncOpenAI` with the SDK's own retries turned off.

Retries are ours so that one function, `is_retryable`, decides from status and headers what is
worth another try, and so that the budget of tries and waits is visible in one place instead of
being multiplied by a hidden layer inside the SDK.

Structured output: endpoints differ in how they take the answer's JSON schema, so the request's
`response_format` is chosen per endpoint kind (`structured_output`):

- `json_schema`: `{"type": "json_schema", "json_schema": {"name": "decomposition", "strict": true,
  "schema": ...}}`, OpenAI's structured outputs, also taken by vLLM and Ollama;
- `json_object`: `{"type": "json_object", "schema": ...}`, llama-cpp-python's server (which refuses
  `json_schema`) turns the schema into a grammar; servers that ignore `schema` still give JSON;
- `prompt`: no `response_format`; the answer's shape is only described in the prompt;
- `auto` (the default): the first of those three the endpoint does not refuse, learned on the
  first call and remembered for the process.

The answer's length is bounded by `max_tokens`, which OpenAI's newer models (o1, o3, gpt-5) refuse
for `max_completion_tokens`, a field servers older than it may refuse or ignore in turn. So
api.openai.com is sent `max_completion_tokens` and any other endpoint `max_tokens`; an endpoint
that refuses the field it was sent (a 400 or 422 naming it) is sent the other from then on, learned
like the structured-output mode, once per process.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import openai

from paradecom import limits
from paradecom.errors import ConfigError, DecompositionError, EndpointError
from paradecom.logs import get_logger

from .prompt import DEFAULT_MAX_SUBTASKS, ENV_MAX_SUBTASKS
from .request_pacer import RequestPacer
from .schema import decomposition_schema, grammar_schema

log = get_logger("paradecom.runner.llm")

# Told of every HTTP 429 (with its Retry-After in seconds, if any) met by calls made in this
# context: the runner sets it per lease, to report rate limits to the leader as they happen.
RATE_LIMIT_LISTENER: ContextVar[Callable[[float | None], None] | None] = ContextVar(
    "paradecom_rate_limit_listener", default=None
)

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_TOKENS = limits.DEFAULT_MAX_TOKENS
DEFAULT_TEMPERATURE = 0.2
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 20.0
# A server asking for a longer pause than this is better answered by failing the attempt: the
# leader reschedules the task with its own backoff instead of this runner holding a lease idle.
MAX_RETRY_AFTER_S = 60.0
# Without a key the SDK refuses to build a client; local servers ignore the header anyway.
UNUSED_API_KEY = "unused"

MAX_TOKENS_LIMIT = 1_000_000
MAX_TIMEOUT_S = 3_600.0
ENV_STRUCTURED_OUTPUT = "PARADECOM_STRUCTURED_OUTPUT"
ENV_MAX_TOKENS = "PARADECOM_MAX_TOKENS"
ENV_LLM_TIMEOUT = "PARADECOM_LLM_TIMEOUT"
# Names the endpoint in the decomposition cache's key when its URL does not: a server started on a
# free port for each run (the embedded model) is the same model at a new address every time.
ENV_ENDPOINT_ID = "PARADECOM_ENDPOINT_ID"

STRUCTURED_OUTPUT_MODES = ("auto", "json_schema", "json_object", "prompt")
# What `auto` tries, in order: the first the endpoint does not refuse is kept.
AUTO_ORDER = ("json_schema", "json_object", "prompt")
SCHEMA_NAME = "decomposition"
NO_ENDPOINT = "no LLM endpoint: set OPENAI_BASE_URL (and OPENAI_API_KEY for hosted endpoints)"
# The check `paradecom run` makes before it builds anything: long enough for a busy local server to
# list its models, short enough that an endpoint that cannot work is reported within seconds.
CHECK_TIMEOUT_S = 5.0
# A model the endpoint does not list is asked for one token: a slow answer is not a failure.
CHECK_PROBE_TIMEOUT_S = 20.0
# Words by which an endpoint's refusal names the response format it cannot take.
_FORMAT_WORDS = ("response_format", "response format", "json_schema", "json schema", "json_object", "schema")
# Statuses such a refusal comes with: 400 and 422 usually; llama-cpp-python's server answers a
# request it cannot validate with 500, its message naming the field.
_FORMAT_REFUSAL_STATUSES = frozenset({400, 415, 422, 500, 501})

# The mode `auto` settled on, by (base URL, model): learned once per process.
_learned_modes: dict[tuple[str, str], str] = {}

# The two fields that bound an answer's length, and the hosts that are sent the second first.
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
MAX_COMPLETION_TOKENS_HOSTS = frozenset({"api.openai.com"})
# Words by which an endpoint refuses a field it does not take (OpenAI: "Unsupported parameter";
# pydantic servers: "Extra inputs are not permitted"), as opposed to refusing its value.
_UNSUPPORTED_WORDS = ("unsupported", "not supported", "unknown", "unrecognized", "not permitted", "not allowed")
# The field an endpoint refused the other for, by (base URL, model): learned once per process.
_learned_token_fields: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Completion:
    """One chat completion: the answer's text and what it cost."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a response asks to wait (`retry-after-ms`, `retry-after` in seconds or as a date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_tz(value)
        except (TypeError, ValueError):
            return None
        if parsed is not None:
            return max(0.0, float(email.utils.mktime_tz(parsed)) - time.time())
    return None


def is_retryable(exc: BaseException) -> tuple[bool, float | None]:
    """Whether trying the same request again may succeed, and how long the server asked to wait.

    Connection failures and timeouts are retryable. An HTTP error is retryable on 408 (request
    timeout), 409 (lock conflict), 429 (rate limit) and 5xx, unless `x-should-retry` says
    otherwise either way; a 429 for an exhausted quota is not, since waiting does not refill it.
    Everything else (400, 401, 403, 404, 422, bugs) is not.
    """
    if isinstance(exc, openai.APIStatusError):
        headers = exc.response.headers
        delay = _retry_after(headers)
        should_retry = headers.get("x-should-retry", "").strip().lower()
        if should_retry == "true":
            return True, delay
        if should_retry == "false":
            return False, None
        if exc.status_code == 429 and exc.code == "insufficient_quota":
            return False, None
        status = exc.status_code
        if status in (408, 409, 429) or status >= 500:
            return True, delay
        return False, None
    if isinstance(exc, openai.APIConnectionError | TimeoutError | ConnectionError):
        # APITimeoutError is an APIConnectionError.
        return True, None
    return False, None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter for the `attempt`-th retry (1-based): between half and all
    of min(cap, base * 2**(attempt - 1)), so runners that failed together do not retry together."""
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 30))
    return ceiling * random.uniform(0.5, 1.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def response_format_for(mode: str, schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `response_format` a request carries in structured-output `mode` (None: none at all)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": schema}}
    if mode == "json_object":
        try:
            grammar = grammar_schema(dict(schema))
        except (KeyError, TypeError, AttributeError):
            # Not shaped like ParaDecom's schemas (a later contract version's): sent as it is.
            grammar = dict(schema)
        return {"type": "json_object", "schema": grammar}
    if mode == "prompt":
        return None
    raise ValueError(f"no response_format for structured output mode {mode!r}")


def rejects_response_format(exc: BaseException) -> bool:
    """Whether `exc` is the endpoint refusing the request's `response_format` (so another kind may
    be accepted), as opposed to refusing the request for any other reason."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in _FORMAT_REFUSAL_STATUSES:
        return False
    text = f"{exc.message} {exc.body!r}".lower()
    return any(word in text for word in _FORMAT_WORDS)


def max_tokens_field(base_url: str) -> str:
    """The field that bounds the answer's length in a first request to `base_url`."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    return MAX_TOKENS_FIELDS[1] if host in MAX_COMPLETION_TOKENS_HOSTS else MAX_TOKENS_FIELDS[0]


def refuses_field(exc: BaseException, field: str) -> bool:
    """Whether `exc` is the endpoint refusing the request because it does not take `field` (so the
    other answer-length field may be taken), as opposed to refusing it for any other reason."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in (400, 422):
        return False
    text = f"{exc.message} {exc.body!r}".lower()
    named = getattr(exc, "param", None) == field or f"'{field}'" in text or f'"{field}"' in text
    return named and any(word in text for word in _UNSUPPORTED_WORDS)


def _other_field(field: str) -> str:
    return MAX_TOKENS_FIELDS[1] if field == MAX_TOKENS_FIELDS[0] else MAX_TOKENS_FIELDS[0]


def endpoint_configured(base_url: str | None = None, api_key: str | None = None) -> bool:
    """Whether an endpoint is given, or set in OPENAI_BASE_URL / OPENAI_API_KEY."""
    return bool(base_url or os.environ.get("OPENAI_BASE_URL") or api_key or os.environ.get("OPENAI_API_KEY"))


def env_setting(name: str, parse: type[int] | type[float], low: float, high: float) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = parse(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={text} is out of range {low:g}..{high:g}")
    return value


def default_structured_output() -> str:
    """$PARADECOM_STRUCTURED_OUTPUT, else auto; ConfigError if it names no mode."""
    mode = os.environ.get(ENV_STRUCTURED_OUTPUT, "").strip() or "auto"
    if mode not in STRUCTURED_OUTPUT_MODES:
        raise ConfigError(f"{ENV_STRUCTURED_OUTPUT}={mode!r} is not one of {', '.join(STRUCTURED_OUTPUT_MODES)}")
    return mode


class LLMClient:
    """Chat completions against one model at one OpenAI-compatible endpoint.

    The endpoint comes from the arguments or else the openai client's own variables:
    OPENAI_BASE_URL, OPENAI_API_KEY. A base URL without a key is a local server that needs none.
    Settings not given come from $PARADECOM_STRUCTURED_OUTPUT, $PARADECOM_MAX_TOKENS,
    $PARADECOM_LLM_TIMEOUT, $PARADECOM_MAX_SUBTASKS, $PARADECOM_ANSWER_PROFILE and
    $PARADECOM_ENDPOINT_ID when set (how `paradecom run` tunes its runner processes for the
    embedded model), else the defaults: auto, limits.DEFAULT_MAX_TOKENS (2,000) tokens, 120 s, and a schema allowing the
    runner's default --max-subtasks (7) in the `full` answer profile. `max_subtasks` is the
    schema's bound on the number of subtasks; runners pass theirs
    (decompose.DecompositionSettings.llm_client). `endpoint_id` names the endpoint in the answer
    format (the cache's key) instead of its URL.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_tokens: int | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
        structured_output: str | None = None,
        max_subtasks: int | None = None,
        answer_profile: str | None = None,
        endpoint_id: str | None = None,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if structured_output is None:
            structured_output = default_structured_output()
        if max_tokens is None:
            max_tokens = int(env_setting(ENV_MAX_TOKENS, int, 1, MAX_TOKENS_LIMIT) or DEFAULT_MAX_TOKENS)
        if timeout is None:
            timeout = env_setting(ENV_LLM_TIMEOUT, float, 1.0, MAX_TIMEOUT_S) or DEFAULT_TIMEOUT_S
        if max_subtasks is None:
            max_subtasks = int(env_setting(ENV_MAX_SUBTASKS, int, 1, limits.MAX_SUBTASKS) or DEFAULT_MAX_SUBTASKS)
        self.schema = decomposition_schema(max_subtasks, profile=answer_profile)
        if structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(f"structured_output must be one of {', '.join(STRUCTURED_OUTPUT_MODES)}")
        self.model = model
        self.structured_output = structured_output
        # `auto`: the kinds this endpoint refused.
        self._refused: list[str] = []
        # The answer-length fields this endpoint refused.
        self._refused_fields: set[str] = set()
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.pacer = RequestPacer()
        if client is not None:
            self.base_url = str(client.base_url)
            self._client = client
            self.endpoint_id = endpoint_id or os.environ.get(ENV_ENDPOINT_ID) or self.base_url
            return
        if not endpoint_configured(base_url, api_key):
            # A runner cannot start the embedded model itself: whoever starts it points it there.
            raise ConfigError(NO_ENDPOINT)
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or UNUSED_API_KEY,
            timeout=timeout,
            max_retries=0,
        )
        # Kept for log lines; the key never is.
        self.base_url = str(self._client.base_url)
        self.endpoint_id = endpoint_id or os.environ.get(ENV_ENDPOINT_ID) or self.base_url

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()

    async def check_endpoint(self) -> None:
        """`check_endpoint` for this client's endpoint and model, over its own connections."""
        await check_endpoint(self.model, client=self._client)

    @property
    def answer_format(self) -> dict[str, Any]:
        """What besides the model and the prompt shapes an answer (part of the decomposition
        cache's key): the endpoint (two servers may serve different models under one name), the
        structured-output mode and the schema."""
        return {"endpoint": self.endpoint_id, "structured_output": self.structured_output, "schema": self.schema}

    async def _create(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Completion:
        """One request, in the structured-output mode set, or learned, or (`auto`) being learned.

        `auto` holds no request back while it learns: the first calls all go at once in the first
        kind not yet refused, and a refusal (an immediate 400) sends that call on to the next kind.
        A burst of first calls costs at most one quick refusal each, never a round trip of waiting.
        """
        if self.structured_output != "auto":
            return await self._request(messages, self.structured_output, schema)
        endpoint = (self.base_url, self.model)
        while True:
            learned = _learned_modes.get(endpoint)
            mode = learned or next(m for m in AUTO_ORDER if m not in self._refused)
            try:
                completion = await self._request(messages, mode, schema)
            except openai.APIStatusError as exc:
                if learned or mode == AUTO_ORDER[-1] or not rejects_response_format(exc):
                    raise
                if mode not in self._refused:
                    self._refused.append(mode)
                    log.info("endpoint refused a response format, trying the next", mode=mode, error=_describe(exc))
                continue
            if endpoint not in _learned_modes:
                _learned_modes[endpoint] = mode
                log.info("structured output mode chosen", mode=mode, base_url=self.base_url, model=self.model)
            return completion

    async def _request(self, messages: Sequence[Mapping[str, str]], mode: str, schema: Mapping[str, Any]) -> Completion:
        """One request in `mode`, bounded by the answer-length field the endpoint takes (sent the
        other once if it refuses the one it was sent: see the module's docstring)."""
        response_format = response_format_for(mode, dict(schema))
        extra: dict[str, Any] = {} if response_format is None else {"response_format": response_format}
        endpoint = (self.base_url, self.model)
        while True:
            field = _learned_token_fields.get(endpoint) or max_tokens_field(self.base_url)
            try:
                return await self._send(messages, {**extra, field: self.max_tokens})
            except openai.APIStatusError as exc:
                other = _other_field(field)
                if not refuses_field(exc, field) or other in self._refused_fields:
                    raise
                self._refused_fields.add(field)
                if _learned_token_fields.get(endpoint) != other:
                    _learned_token_fields[endpoint] = other
                    log.info("endpoint refused a field, sending the other", field=field, instead=other)

    async def _send(self, messages: Sequence[Mapping[str, str]], extra: Mapping[str, Any]) -> Completion:
        number = await self.pacer.acquire()
        headers: Mapping[str, str] | None = None
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=cast(Any, list(messages)),
                temperature=self.temperature,
                **extra,
            )
            headers = raw.headers
            response = raw.parse()
        except openai.APIStatusError as exc:
            headers = exc.response.headers
            raise
        finally:
            await self.pacer.learn(number, headers)
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Completion(
            text=(choice.message.content or "") if choice is not None else "",
            finish_reason=str(choice.finish_reason or "") if choice is not None else "",
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            completion_tokens=usage.completion_tokens if usage is not None else 0,
        )

    async def complete(
        self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any] | None = None
    ) -> Completion:
        """One completion of `messages`, retrying transient errors with backoff. `schema` is the
        answer's JSON schema (an LlmRequest's); None: the one for this client's max_subtasks.

        Raises DecompositionError: retryable=True once the attempts are spent on transient errors
        (the leader may try again later), retryable=False for an error no retry can fix.
        """
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self._create(messages, self.schema if schema is None else schema)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retryable, retry_after = is_retryable(exc)
                if isinstance(exc, openai.APIStatusError) and exc.status_code == 429:
                    listener = RATE_LIMIT_LISTENER.get()
                    if listener is not None:
                        listener(retry_after)
                reason = _describe(exc)
                if not retryable and not isinstance(exc, openai.APIError):
                    # Not an answer from the endpoint but a surprise on our side (a reply the SDK
                    # could not read, a bug): repeating it here is pointless, but another attempt,
                    # maybe on another runner, may well succeed, so the leader is told to retry.
                    log.exception("LLM request failed unexpectedly")
                    raise DecompositionError(f"LLM request failed: {reason}", retryable=True) from exc
                if not retryable:
                    raise DecompositionError(f"LLM request failed: {reason}", retryable=False) from exc
                if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                    raise DecompositionError(
                        f"LLM asked to wait {retry_after:.0f} s: {reason}", retryable=True
                    ) from exc
                if attempt == self.max_attempts:
                    raise DecompositionError(
                        f"LLM request failed {attempt} times, last: {reason}", retryable=True
                    ) from exc
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max)
                if retry_after is not None:
                    # The server knows when it will have room; a little jitter on top keeps the
                    # runners it turned away from coming back in one burst.
                    delay = retry_after + random.uniform(0.0, min(1.0, 0.1 * retry_after + 0.1))
                log.info("LLM request failed, retrying", error=reason, llm_attempt=attempt, delay_s=round(delay, 2))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _endpoint_failure(where: str, model: str, exc: Exception) -> EndpointError | None:
    """The EndpointError for an answer that shows the endpoint cannot work; None if it may yet."""
    if isinstance(exc, openai.APITimeoutError):
        return EndpointError(f"the LLM endpoint {where} did not answer within {CHECK_TIMEOUT_S:g} s")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return EndpointError(f"cannot reach the LLM endpoint {where}: {type(cause).__name__}: {cause}")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return EndpointError(
            f"the LLM endpoint {where} refused the API key (HTTP {exc.status_code}: {exc.message}): "
            "check OPENAI_API_KEY"
        )
    if isinstance(exc, openai.NotFoundError) or (
        isinstance(exc, openai.BadRequestError) and "model" in f"{exc.message} {exc.code}".lower()
    ):
        return EndpointError(f"the LLM endpoint {where} does not serve the model {model!r} ({_describe(exc)})")
    return None


async def _probe(client: openai.AsyncOpenAI, model: str, field: str) -> None:
    """Ask `model` for one token, bounded by `field`."""
    limit: dict[str, Any] = {field: 1}
    await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Answer with the word OK."}],
        timeout=CHECK_PROBE_TIMEOUT_S,
        **limit,
    )


async def check_endpoint(
    model: str, *, base_url: str | None = None, api_key: str | None = None, client: openai.AsyncOpenAI | None = None
) -> None:
    """Raise EndpointError, naming the endpoint and the reason, when it cannot work: nothing
    listening (or not answering within CHECK_TIMEOUT_S), the key refused, the model unknown.

    The model list (GET /models) answers most of it in one quick call. A model it does not list
    (or an endpoint without the list) is asked for one token, since single-model servers such as
    llama.cpp serve any name. Anything else (a 429, a 5xx, a slow answer) may pass: the run's own
    retries deal with it.
    """
    owned = client is None
    if client is not None:
        # The run's own client (its connections and TLS set-up), with the check's timeout.
        client = client.with_options(timeout=CHECK_TIMEOUT_S, max_retries=0)
    else:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or UNUSED_API_KEY, timeout=CHECK_TIMEOUT_S, max_retries=0
        )
    where = str(client.base_url).rstrip("/")
    try:
        try:
            page = await client.models.list()
        except openai.APIStatusError as exc:
            failure = _endpoint_failure(where, model, exc)
            if failure is not None and not isinstance(exc, openai.NotFoundError):
                raise failure from None
            # No model list here (404 and the like): the model itself tells.
        except openai.APIError as exc:
            raise (
                _endpoint_failure(where, model, exc) or EndpointError(f"LLM endpoint {where}: {_describe(exc)}")
            ) from None
        else:
            if any(getattr(m, "id", None) == model for m in page.data):
                return
        field = _learned_token_fields.get((str(client.base_url), model)) or max_tokens_field(str(client.base_url))
        try:
            try:
                await _probe(client, model, field)
            except openai.APIStatusError as exc:
                if not refuses_field(exc, field):
                    raise
                await _probe(client, model, _other_field(field))
                _learned_token_fields[(str(client.base_url), model)] = _other_field(field)
        except openai.APITimeoutError:
            return  # reachable (it listed or refused in time) but slow to answer: not a failure
        except openai.APIError as exc:
            failure = _endpoint_failure(where, model, exc)
            if failure is not None:
                raise failure from None
            log.info("endpoint check: the model's answer was an error a run may survive", error=_describe(exc))
    finally:
        if owned:
            await client.close()
