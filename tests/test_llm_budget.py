"""The leader's LLM budget in isolation: token buckets and AIMD, on a hand-driven clock."""

from __future__ import annotations

import pytest

from paradecom.leader.llm_budget import LlmBudget, estimate_tokens


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dispatch_for(budget: LlmBudget, clock: Clock, seconds: float, step: float = 0.05) -> list[float]:
    """Dispatch greedily (one task at a time) for `seconds`; returns the dispatch times."""
    times = []
    end = clock.now + seconds
    while clock.now < end:
        while budget.admit(1, 0, 100) == 1:
            budget.spend(1, 100)
            times.append(clock.now)
        clock.now += step
    return times


@pytest.mark.parametrize("rpm", [2, 10, 60, 600])
def test_no_sixty_second_window_exceeds_the_rpm(rpm: int) -> None:
    """However greedy the dispatcher, any 60 s window holds at most `rpm` dispatches."""
    clock = Clock()
    budget = LlmBudget(rpm=rpm, clock=clock)
    times = dispatch_for(budget, clock, 180, step=min(0.05, 60 / rpm / 100))
    assert len(times) >= 2
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t < start + 60]
        assert len(in_window) <= rpm
    # And the budget is used, not wasted: about rpm - 1 per minute over three minutes.
    assert len(times) >= 3 * (rpm - 1) * 0.95


def test_token_budget_paces_by_estimate_and_corrections_create_debt() -> None:
    """Dispatch stops when the token bucket is empty; usage above the estimate pauses it longer."""
    clock = Clock()
    budget = LlmBudget(tpm=60_000, clock=clock)
    estimate = estimate_tokens(400)
    sent = 0
    while budget.admit(1, 0, estimate):
        budget.spend(1, estimate)
        sent += 1
    assert sent == 6000 // estimate, "a tenth of a minute's tokens at most goes out at once"
    wait = budget.seconds_until_room(estimate)
    assert wait is not None and wait > 0
    budget.spend(0, 10_000)  # the answers were bigger than guessed
    longer = budget.seconds_until_room(estimate)
    assert longer is not None and longer > wait


def test_rate_limit_halves_the_cap_pauses_and_recovers() -> None:
    """A 429 halves what may be in flight and pauses for Retry-After; successes raise the cap back."""
    clock = Clock()
    budget = LlmBudget(clock=clock)
    assert budget.admit(50, 40, 100) == 50, "no cap before any 429"
    budget.on_rate_limited(1, 2.0, in_flight=40)
    assert budget.cap == 20
    assert budget.admit(10, 5, 100) == 0, "paused for Retry-After"
    clock.now += 2.1
    assert budget.admit(10, 15, 100) == 5
    budget.on_rate_limited(1, 0.0, in_flight=20)
    assert budget.cap == 10
    for _ in range(200):
        budget.on_success(total_slots=64)
    assert budget.cap is not None and budget.cap > 20
    for _ in range(5000):
        budget.on_success(total_slots=64)
    assert budget.cap is None, "the cap is dropped once it no longer binds"


def test_limits_are_checked_and_changeable() -> None:
    """set_limits refuses negative or huge values and takes effect at once."""
    budget = LlmBudget()
    with pytest.raises(ValueError):
        budget.set_limits(-1, 0)
    with pytest.raises(ValueError):
        budget.set_limits(0, 10**12)
    budget.set_limits(120, 0)
    assert budget.rpm == 120 and budget.admit(10, 0, 100) == 1
