"""The global LLM budget: the leader paces dispatch so all runners together stay inside the
endpoint's limits, and adapts to the 429s runners report.

Two token buckets, requests and tokens per minute. A task costs one request and an estimate of
its tokens (prompt size + the completion allowance) when it is dispatched; when its usage comes
back the estimate is corrected (re-asks cost extra requests, real token counts replace the
guess), so a bucket can go into debt and pause dispatch until it refills.

The request bucket holds one request and refills at (rpm - 1) per minute, so no 60-second window
ever sees more than `rpm` dispatches: a budget set at the endpoint's limit does not trip it.

On top, AIMD: a reported 429 halves the number of tasks allowed in flight (and pauses dispatch
for the Retry-After the endpoint gave, at most `limits.MAX_RETRY_AFTER_MS`; SetLlmBudget ends a
pause); every answer without one adds 1/cap back, so the cap
climbs by one per round of successful answers until it no longer binds. With no budget set this
is what keeps an unknown endpoint's 429 rate down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from paradecom import limits

# What a task's answer may cost beyond its prompt: the runner's default max_tokens.
COMPLETION_ALLOWANCE_TOKENS = limits.DEFAULT_MAX_TOKENS
# The system prompt and instructions the runner adds around the task's context.
PROMPT_OVERHEAD_TOKENS = 600
CHARS_PER_TOKEN = 4


def estimate_tokens(context_bytes: int) -> int:
    """A task's expected token cost from the size of the context the runner will put in its prompt."""
    return context_bytes // CHARS_PER_TOKEN + PROMPT_OVERHEAD_TOKENS + COMPLETION_ALLOWANCE_TOKENS


@dataclass
class _Bucket:
    capacity: float
    per_second: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.per_second)
        self.at = now

    def seconds_until(self, amount: float) -> float:
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.per_second


class LlmBudget:
    """Decides how many tasks may be dispatched now. Soft state: rebuilt empty at restart."""

    def __init__(self, rpm: int = 0, tpm: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate_limited = 0
        self.cap: float | None = None  # AIMD cap on tasks in flight; None: not binding
        self.paused_until = 0.0
        self._requests: _Bucket | None = None
        self._tokens: _Bucket | None = None
        self.rpm = self.tpm = 0
        self.set_limits(rpm, tpm)

    def set_limits(self, rpm: int, tpm: int) -> None:
        if not (0 <= rpm <= limits.MAX_RPM and 0 <= tpm <= limits.MAX_TPM):
            raise ValueError(
                f"requests per minute must be 0 to {limits.MAX_RPM:,} and tokens per minute 0 to {limits.MAX_TPM:,}"
            )
        now = self.clock()
        self.rpm, self.tpm = rpm, tpm
        self._requests = _Bucket(1.0, max(rpm - 1, 1) / 60, 1.0, now) if rpm else None
        if tpm:
            # Big enough for the largest single task, so a small tpm still lets work through.
            capacity = max(tpm / 10, float(estimate_tokens(0)))
            self._tokens = _Bucket(capacity, tpm / 60, capacity, now)
        else:
            self._tokens = None

    def admit(self, wanted: int, in_flight: int, token_estimate: int) -> int:
        """How many of `wanted` tasks (each about `token_estimate` tokens) may go out now."""
        now = self.clock()
        if now < self.paused_until:
            return 0
        allowed = wanted
        if self.cap is not None:
            allowed = min(allowed, max(0, int(self.cap) - in_flight))
        for bucket, cost in ((self._requests, 1.0), (self._tokens, float(token_estimate))):
            if bucket is not None and allowed > 0:
                bucket.refill(now)
                allowed = min(allowed, max(0, int(bucket.level // cost)))
        return allowed

    def spend(self, requests: int, tokens: int) -> None:
        """Charge dispatched work (or a correction: negative amounts give back)."""
        now = self.clock()
        for bucket, amount in ((self._requests, requests), (self._tokens, tokens)):
            if bucket is not None:
                bucket.refill(now)
                bucket.level -= amount

    def seconds_until_room(self, token_estimate: int) -> float | None:
        """When dispatch may resume if the buckets or a pause hold it back (None: nothing to wait for)."""
        now = self.clock()
        waits = [self.paused_until - now] if now < self.paused_until else []
        for bucket, cost in ((self._requests, 1.0), (self._tokens, float(token_estimate))):
            if bucket is not None:
                bucket.refill(now)
                waits.append(bucket.seconds_until(cost))
        positive = [w for w in waits if w > 0]
        return min(positive) if positive else None

    def on_rate_limited(self, count: int, retry_after_s: float, in_flight: int) -> None:
        """Runners met `count` 429s: halve the in-flight cap, pause for the Retry-After (at most
        MAX_RETRY_AFTER_MS: one runner's report stops every runner, so it is not trusted further)."""
        self.rate_limited = min(self.rate_limited + max(0, count), limits.INT64_MAX)
        self.cap = max(1.0, min(self.cap if self.cap is not None else float("inf"), in_flight) / 2)
        if retry_after_s > 0:
            pause = min(retry_after_s, limits.MAX_RETRY_AFTER_MS / 1000)
            self.paused_until = max(self.paused_until, self.clock() + pause)

    def clear_pause(self) -> None:
        """Dispatch may resume now (SetLlmBudget: the operator has the last word)."""
        self.paused_until = 0.0

    def on_success(self, total_slots: int) -> None:
        """An answer came back without a 429: the cap grows by one per cap successes."""
        if self.cap is not None:
            self.cap += 1 / self.cap
            if self.cap >= total_slots:
                self.cap = None

    def paused_ms(self) -> int:
        """Milliseconds until dispatch resumes after a Retry-After; 0 when not paused."""
        return min(max(0, int((self.paused_until - self.clock()) * 1000)), limits.MAX_RETRY_AFTER_MS)

    def paused_until_unix_ms(self) -> int:
        """When dispatch resumes, in milliseconds since the Unix epoch (wall clock); 0 when not paused."""
        paused_ms = self.paused_ms()
        return int(time.time() * 1000) + paused_ms if paused_ms else 0
