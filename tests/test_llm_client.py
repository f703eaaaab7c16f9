"""The LLM client (runner/llm.py) through the real openai client over a scripted HTTP transport: which
errors are retried and for how long, and the configuration from the environment; and the request
pacer (runner/request_pacer.py) that holds calls while a stated rate-limit budget is spent."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx2
import openai
import pytest
from structlog.testing import capture_logs

from paradecom.errors import ConfigError, DecompositionError
from paradecom.runner.llm import Completion, LLMClient, is_retryable
from paradecom.runner.request_pacer import RequestPacer, parse_duration

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


# --- the request pacer ------------------------------------------------------------------------------


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
