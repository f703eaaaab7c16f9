"""How many decompositions could usefully run at once right now: the `--runners auto` algorithm,
and the `paradecom_desired_runners` gauge an autoscaler keys on.

    limit   = min(budget bound, machine bound, endpoint slots, the caller's cap)
    desired = min(frontier, limit)

- **frontier**: tasks ready now or in flight, over every running project (queued + leased). More
  slots than this would sit idle; it grows as results add children and shrinks as levels finish.
- **budget bound**: the LLM budget's AIMD cap on tasks in flight (halved on each reported 429,
  back up by one per round of answers without one), and what `--llm-rpm` / `--llm-tpm` sustain by
  Little's law: requests per second x the mean seconds a task takes (measured from lease grant to
  result; unbounded until one has been measured, when the budget's buckets pace dispatch anyway).
- **machine bound** (only where the decompositions run in this process, `paradecom run`):
  PER_CORE_CALLS calls per idle core, an idle core being one the 1-minute load average leaves free
  (our own process counted as idle), and at most one call per MIB_PER_CALL of available memory;
  re-read at most once per MACHINE_SAMPLE_S.
- **endpoint slots**: requests the endpoint answers at once when it is known (the embedded model's
  server pool); a hosted endpoint's limit shows up as 429s instead, through the budget bound.

Everything is bounded by [1, MAX_AUTO_SLOTS] except `desired`, which is 0 when nothing is to do.
In a local auto run the scheduler enforces `limit` (dispatch stops there); a cluster leader only
publishes `desired` divided by the slots of a typical runner, as the number of runners it could use.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from paradecom import limits

from .core import DecompositionLeader
from .llm_budget import LlmBudget

# Calls one core keeps fed: a runner spends 3-5 ms of CPU on a call (docs/performance.md), so one
# core handles some 200 calls a second, 64 in flight even at a fast 0.3 s per call.
PER_CORE_CALLS = 64
# Memory held per call in flight (the prompt, the answer, the HTTP connection's buffers), generously.
MIB_PER_CALL = 2
MACHINE_SAMPLE_S = 1.0
MAX_AUTO_SLOTS = limits.MAX_AUTO_SLOTS
# Weight of the newest task in the mean task duration (an exponential moving average).
DURATION_WEIGHT = 0.2


def _available_mib() -> int | None:
    """MemAvailable from /proc/meminfo, in MiB; None where there is no such file (not Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class MachineProbe:
    """The machine bound: cores, load and memory, sampled at most once per MACHINE_SAMPLE_S."""

    cores: int = os.cpu_count() or 1
    clock: Callable[[], float] = time.monotonic
    load: Callable[[], float] = lambda: os.getloadavg()[0]
    available_mib: Callable[[], int | None] = _available_mib
    _sampled_at: float = -math.inf
    _limit: int = 1

    def limit(self) -> int:
        now = self.clock()
        if now - self._sampled_at >= MACHINE_SAMPLE_S:
            self._sampled_at = now
            # The load includes this process (at most about one core's worth): it is not "others".
            others = max(0.0, self.load() - 1.0)
            idle_cores = max(0.5, self.cores - others)
            bound = int(idle_cores * PER_CORE_CALLS)
            memory = self.available_mib()
            if memory is not None:
                bound = min(bound, memory // MIB_PER_CALL)
            self._limit = max(1, min(MAX_AUTO_SLOTS, bound))
        return self._limit


class Parallelism:
    """The auto algorithm of the module docstring for one leader."""

    def __init__(
        self,
        leader: DecompositionLeader,
        budget: LlmBudget,
        *,
        enforce: bool = False,
        machine: MachineProbe | None = None,
        endpoint_slots: int | None = None,
        cap: int | None = None,
    ) -> None:
        self.leader = leader
        self.budget = budget
        self.enforce = enforce
        self.machine = machine
        self.endpoint_slots = endpoint_slots
        self.cap = cap
        self.mean_task_s: float | None = None

    def observe_task(self, seconds: float) -> None:
        """A task's lease came back after `seconds` (for the rpm/tpm bound)."""
        if seconds >= 0:
            m = self.mean_task_s
            self.mean_task_s = seconds if m is None else m + DURATION_WEIGHT * (seconds - m)

    def frontier(self) -> int:
        """Tasks ready now or in flight, over every running project."""
        return self.leader.open_task_count()

    def budget_bound(self, typical_tokens: int) -> int | None:
        """In-flight tasks the LLM budget allows (None: it sets no bound)."""
        bounds: list[float] = []
        if self.budget.cap is not None:
            bounds.append(self.budget.cap)
        if self.mean_task_s is not None:
            if self.budget.rpm:
                bounds.append(self.budget.rpm / 60 * self.mean_task_s)
            if self.budget.tpm and typical_tokens > 0:
                bounds.append(self.budget.tpm / 60 * self.mean_task_s / typical_tokens)
        return max(1, math.ceil(min(bounds))) if bounds else None

    def limit(self, typical_tokens: int) -> int:
        """How many tasks may be in flight at once now, before the frontier is considered."""
        bounds = [MAX_AUTO_SLOTS]
        for bound in (
            self.budget_bound(typical_tokens),
            self.machine.limit() if self.machine is not None else None,
            self.endpoint_slots,
            self.cap,
        ):
            if bound is not None:
                bounds.append(bound)
        return max(1, min(bounds))

    def desired(self, typical_tokens: int) -> int:
        """Decompositions that could usefully run at once now (0 when nothing is to do)."""
        return min(self.frontier(), self.limit(typical_tokens))

    def desired_runners(self, typical_tokens: int, slots_per_runner: float | None) -> int:
        """Runners of `slots_per_runner` slots (default: DEFAULT_CONCURRENCY) it takes to hold `desired`."""
        per_runner = slots_per_runner if slots_per_runner and slots_per_runner > 0 else limits.DEFAULT_CONCURRENCY
        return math.ceil(self.desired(typical_tokens) / per_runner)
