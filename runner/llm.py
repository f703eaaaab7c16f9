"""The runner's one door to an LLM: `openai.AsyncOpenAI` with the SDK's own retries turned off.

Retries are ours so that one function, `is_retryable`, decides from status and headers what is
worth another try, and so that the budget of tries and waits is visible in one place instead of
being multiplied by a hidden layer inside the SDK.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import openai
import structlog

from paradecom.errors import ConfigError, DecompositionError

log = structlog.get_logger("paradecom.runner.llm")

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_TOKENS = 2_000
DEFAULT_TEMPERATURE = 0.2
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 20.0
# A server asking for a longer pause than this is better answered by failing the attempt: the
# leader reschedules the task with its own backoff instead of this runner holding a lease idle.
MAX_RETRY_AFTER_S = 60.0
# Without a key the SDK refuses to build a client; local servers ignore the header anyway.
UNUSED_API_KEY = "unused"


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


def check_endpoint_configured(base_url: str | None = None, api_key: str | None = None) -> None:
    """Raise ConfigError unless an endpoint is given or set in OPENAI_BASE_URL / OPENAI_API_KEY.

    Commands call it before starting anything, so a missing setting is one line, not a runner
    process that fails later."""
    if not (base_url or os.environ.get("OPENAI_BASE_URL") or api_key or os.environ.get("OPENAI_API_KEY")):
        raise ConfigError("no LLM endpoint: set OPENAI_BASE_URL (and OPENAI_API_KEY for hosted endpoints)")


class LLMClient:
    """Chat completions against one model at one OpenAI-compatible endpoint.

    The endpoint comes from the arguments or else the openai client's own variables:
    OPENAI_BASE_URL, OPENAI_API_KEY. A base URL without a key is a local server that needs none.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = DEFAULT_TEMPERATURE,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.model = model
        self.max_attempts = max_attempts
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        if client is not None:
            self.base_url = str(client.base_url)
            self._client = client
            return
        check_endpoint_configured(base_url, api_key)
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

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()

    async def _create(self, messages: Sequence[Mapping[str, str]]) -> Completion:
        response = await self._client.chat.completions.create(
            model=self.model,
            messages=cast(Any, list(messages)),
            # json_object, not json_schema: the one form every OpenAI-compatible server we target
            # (OpenAI, vLLM, Ollama, llama.cpp) accepts; the shape is enforced by our own parser.
            response_format={"type": "json_object"},
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Completion(
            text=(choice.message.content or "") if choice is not None else "",
            finish_reason=str(choice.finish_reason or "") if choice is not None else "",
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            completion_tokens=usage.completion_tokens if usage is not None else 0,
        )

    async def complete(self, messages: Sequence[Mapping[str, str]]) -> Completion:
        """One completion of `messages`, retrying transient errors with backoff.

        Raises DecompositionError: retryable=True once the attempts are spent on transient errors
        (the leader may try again later), retryable=False for an error no retry can fix.
        """
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self._create(messages)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retryable, retry_after = is_retryable(exc)
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
