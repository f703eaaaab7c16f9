"""How `paradecom run` and `parallel_decompose_project` run a project: one validated set of settings
that the CLI's flags and the Python API's arguments both become, so the two cannot drift apart."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from paradecom import limits
from paradecom.grpc_options import parse_address

if TYPE_CHECKING:
    from paradecom.security import Security

AUTO: Literal["auto"] = "auto"
Runners = int | Literal["auto"]


class SettingError(ValueError):
    """A setting (or a combination of settings) that cannot be. `names` are the settings as Python
    spells them; `message(spell)` words it for another spelling (the CLI's `--flag-names`)."""

    def __init__(self, names: tuple[str, ...], detail: str) -> None:
        self.names, self.detail = names, detail
        super().__init__(self.message(str))

    def message(self, spell: Callable[[str], str]) -> str:
        return f"{', '.join(map(spell, self.names))} {self.detail}"


def _whole(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingError((name,), f"must be a whole number from {low} to {high:,}, not {value!r}")
    return value


@dataclass(frozen=True)
class RunSettings:
    """Every setting of one run. Invalid values raise ValueError naming the setting and its range.

    - `runners`: "auto" (the default: as many decompositions at once as the frontier, the LLM budget
      and the machine allow, leader/parallelism.py), a number of runners from 1 to MAX_RUNNERS, or 0
      for the sequential fallback (one task at a time, no gRPC).
    - `concurrency`: LLM calls in flight per runner (default `limits.DEFAULT_CONCURRENCY`; 1 on the
      embedded model); with "auto", a cap on the calls in flight in all.
    - `leader`: HOST:PORT of a running leader to submit to instead of running one here (its runners
      do the work, so `runners`, `concurrency`, the budget, `lease_timeout`, `max_attempts` and
      `runner_processes` do not apply and are refused when set).
    - `llm_rpm`, `llm_tpm`: the LLM budget over all runners (0: none).
    - `lease_timeout`, `max_attempts`: the lease rules (seconds; leases per task before a dead letter).
    - `allow_partial`: return a tree with dead tasks instead of raising PartialTreeError.
    - `runner_processes`: run each runner as a process of its own (CPU isolation) instead of in
      this process.
    """

    runners: Runners = AUTO
    concurrency: int | None = None
    leader: str | None = None
    model: str | None = None
    cache: bool = True
    llm_rpm: int = 0
    llm_tpm: int = 0
    lease_timeout: float = limits.DEFAULT_LEASE_TIMEOUT_S
    max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS
    allow_partial: bool = False
    runner_processes: bool = False
    security: Security | None = None

    def __post_init__(self) -> None:
        if self.runners != AUTO:
            _whole("runners", self.runners, 0, limits.MAX_RUNNERS)
        if self.concurrency is not None:
            _whole("concurrency", self.concurrency, 1, limits.MAX_CONCURRENCY)
        _whole("llm_rpm", self.llm_rpm, 0, limits.MAX_RPM)
        _whole("llm_tpm", self.llm_tpm, 0, limits.MAX_TPM)
        _whole("max_attempts", self.max_attempts, 1, limits.MAX_ATTEMPTS_LIMIT)
        timeout = self.lease_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or not limits.MIN_LEASE_TIMEOUT_S <= timeout <= limits.MAX_LEASE_TIMEOUT_S
        ):
            raise SettingError(
                ("lease_timeout",),
                f"must be a number of seconds from {limits.MIN_LEASE_TIMEOUT_S:g} to "
                f"{limits.MAX_LEASE_TIMEOUT_S:g}, not {timeout!r}",
            )
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise SettingError(("model",), f"must be a non-empty name, not {self.model!r}")
        if self.leader is not None:
            try:
                parse_address(self.leader)
            except (TypeError, ValueError, AttributeError) as exc:
                raise SettingError(("leader",), f"must be HOST:PORT ({exc})") from None
            local_only = tuple(name for name, changed in self._local_settings() if changed)
            if local_only:
                raise SettingError(
                    local_only,
                    f"apply to a run on this machine; with a leader ({self.leader}) its own runners and "
                    "settings do the work",
                )
        elif self.runners == 0 and self.runner_processes:
            raise SettingError(("runner_processes",), "needs runners: the sequential fallback (runners 0) has none")

    def _local_settings(self) -> list[tuple[str, bool]]:
        return [
            ("runners", self.runners != AUTO),
            ("concurrency", self.concurrency is not None),
            ("llm_rpm", self.llm_rpm != 0),
            ("llm_tpm", self.llm_tpm != 0),
            ("lease_timeout", self.lease_timeout != limits.DEFAULT_LEASE_TIMEOUT_S),
            ("max_attempts", self.max_attempts != limits.DEFAULT_MAX_ATTEMPTS),
            ("runner_processes", self.runner_processes),
        ]

    @property
    def auto(self) -> bool:
        return self.runners == AUTO

    @property
    def sequential(self) -> bool:
        return self.runners == 0

    def head_start_calls(self, top_level: int, endpoint_slots: int | None, default_concurrency: int) -> int:
        """How many of a project's `top_level` tasks have their first LLM call sent before the leader
        is up (runner/head_start.py): only where the runners share this process, and never more
        than the leader would have in flight at the start (its cap, the endpoint's slots, one call
        under an LLM budget, which the leader paces from its first lease on)."""
        if self.leader is not None or self.sequential or self.runner_processes:
            return 0
        cap = limits.HEAD_START_CALLS
        if self.auto:
            cap = min(cap, self.concurrency or cap)
        else:
            cap = min(cap, int(self.runners) * (self.concurrency or default_concurrency))
        if endpoint_slots:
            cap = min(cap, endpoint_slots)
        if self.llm_rpm or self.llm_tpm:
            cap = min(cap, 1)
        return min(top_level, cap)


def parse_runners(text: str) -> Runners:
    """`--runners` as typed: "auto" or a whole number from 0 to MAX_RUNNERS (ValueError otherwise)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number (nor auto)") from None
    if not 0 <= value <= limits.MAX_RUNNERS:
        raise ValueError(f"{value} is out of range: auto, or a whole number from 0 to {limits.MAX_RUNNERS}")
    return value
