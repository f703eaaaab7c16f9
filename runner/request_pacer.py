"""Keeps a client's requests inside the endpoint's request budget, as the endpoint states it.

OpenAI (and Azure OpenAI, and many gateways) put the request budget on every answer:
`x-ratelimit-remaining-requests` (requests left in the window) and `x-ratelimit-reset-requests`
(when more become available, as `1s`, `6m0s`, `250ms`). A client that reads them need not meet a
429 to learn the limit: `RequestPacer` holds a request back when the last answer said none are
left, until that answer's reset time, and then lets one request through to learn the new budget
before the rest follow. An endpoint that sends no such headers is never paced (the leader's AIMD
on 429s and `--llm-rpm` remain the controls there).

One pacer serves every call of one `LLMClient`: in a local run all in-process runners share it,
so together they keep to the budget; runner processes each pace their own calls, and the budget
the headers state is shared by all of them, so in a cluster the leader's budget still matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Mapping

REMAINING_HEADER = "x-ratelimit-remaining-requests"
RESET_HEADER = "x-ratelimit-reset-requests"
# A reset further away than this is not believed: a request waits at most this long on the pacer.
MAX_RESET_S = 60.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in `1s`, `6m0s`, `1h2m3.5s`, `250ms` or a bare number of seconds; None if unreadable."""
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class RequestPacer:
    """Admits requests while the endpoint's last stated budget has room (see the module doc)."""

    def __init__(self) -> None:
        self._sent = 0
        # From the newest answer that stated a budget: requests left, the number of the request it
        # answered (0: no answer has stated one yet), and when (time.monotonic) the endpoint said
        # more become available.
        self._remaining = 0
        self._stated_by = 0
        self._reset_at = 0.0
        self._probe: int | None = None
        self._changed = asyncio.Condition()
        self.waits = 0

    def _room(self) -> bool:
        if self._stated_by == 0:
            return True
        # Requests sent after the answering one may not have been counted by the endpoint yet.
        return self._remaining - (self._sent - self._stated_by) > 0

    async def acquire(self) -> int:
        """Wait until a request may go; returns its number, to pass to `learn` with its answer."""
        waited = False
        async with self._changed:
            while True:
                if self._room():
                    break
                now = time.monotonic()
                if now >= self._reset_at and self._probe is None:
                    # The stated reset has passed: one request learns the new budget for the rest.
                    self._probe = self._sent + 1
                    break
                waited = True
                timeout = max(0.0, self._reset_at - now) if self._probe is None else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
            self._sent += 1
            if waited:
                self.waits += 1
            return self._sent

    async def learn(self, number: int, headers: Mapping[str, str] | None) -> None:
        """The answer (or error) to request `number` arrived with these headers."""
        async with self._changed:
            if self._probe == number:
                self._probe = None
            remaining = _int_header(headers, REMAINING_HEADER)
            reset = parse_duration(headers.get(RESET_HEADER, "")) if headers is not None else None
            if remaining is not None and number >= self._stated_by:
                self._remaining = remaining
                self._stated_by = number
                self._reset_at = time.monotonic() + min(reset if reset is not None else 1.0, MAX_RESET_S)
            self._changed.notify_all()


def _int_header(headers: Mapping[str, str] | None, name: str) -> int | None:
    if headers is None:
        return None
    value = headers.get(name)
    if value is None or not value.strip().isascii() or not value.strip().isdigit():
        return None
    return int(value.strip())
