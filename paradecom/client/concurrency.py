"""How many decompositions ran at once during a run: the peak and the time-weighted mean of a
project's leased tasks, read from the progress summaries the leader streams (every change)."""

from __future__ import annotations

import time
from collections.abc import Callable

from paradecom.v1 import project_pb2


class ConcurrencyMeter:
    """Call it with each ProjectSummary; `report()` then says how the run went."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.peak = 0
        self._first: float | None = None
        self._at = 0.0
        self._level = 0
        self._area = 0.0

    def __call__(self, summary: project_pb2.ProjectSummary) -> None:
        now = self.clock()
        if self._first is None:
            self._first = now
        else:
            self._area += self._level * (now - self._at)
        self._at, self._level = now, summary.leased
        self.peak = max(self.peak, summary.leased)

    @property
    def mean(self) -> float:
        """Tasks in flight on average between the first summary and the last."""
        span = self._at - self._first if self._first is not None else 0.0
        return self._area / span if span > 0 else float(self._level)

    def report(self, runners: str | int, mode: str) -> dict[str, object]:
        """The `run` section of a tree (docs/tree-format.md)."""
        return {
            "runners": runners,
            "mode": mode,
            "peak_concurrency": self.peak,
            "mean_concurrency": round(self.mean, 2),
            "wall_s": round(self.clock() - self.started, 3),
        }
