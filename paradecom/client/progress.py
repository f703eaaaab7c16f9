"""A project's progress as `paradecom run` and `paradecom watch` show it.

On a terminal: a live `rich` display (a bar of finished tasks over the tasks known so far, then
leased, queued and dead counts, the rate, tokens and an ETA). Anywhere else, or with `--json`: one
JSON object per line, written only when something changed, for scripts and log collectors
(`leased` is the tasks being decomposed at that moment, `peak_leased` the most at once so far):

    {"project_id": "…", "state": "running", "done": 4, "leased": 2, "peak_leased": 3, "queued": 3,
     "dead": 0, "cancelled": 0, "total": 9, "tokens": 1834, "prompt_tokens": 1500, "completion_tokens": 334,
     "elapsed_s": 3.2, "rate_per_s": 1.25, "eta_s": 4.0, "leases_expired": 0,
     "late_results_refused": 0, "error": ""}

The rate is of tasks finished (done or dead) since the display started; the ETA is the tasks still
queued or leased at that rate, so it covers only the tasks known so far: a task decomposed into
children adds work the ETA could not see. `eta_s` is null until the rate is known.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from paradecom.textsafe import terminal_safe
from paradecom.v1 import project_pb2

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

# The display redraws itself 4 times a second; a change is also drawn at once unless the last
# immediate redraw was more recent than this (a big cluster changes hundreds of times a second).
REDRAW_EVERY_S = 0.25


def _state_name(state: project_pb2.ProjectState.ValueType) -> str:
    return project_pb2.ProjectState.Name(state).removeprefix("PROJECT_STATE_").lower()


@dataclass(frozen=True)
class Snapshot:
    """One progress report: a ProjectSummary's counts plus the rate and ETA worked out here."""

    project_id: str
    state: str
    done: int
    leased: int
    peak_leased: int
    queued: int
    dead: int
    cancelled: int
    total: int
    tokens: int
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float
    rate_per_s: float
    eta_s: float | None
    leases_expired: int
    late_results_refused: int
    error: str

    def key(self) -> tuple[Any, ...]:
        """What must differ for a report to be a change (the timing fields follow the counts)."""
        return (self.state, self.done, self.leased, self.queued, self.dead, self.cancelled, self.total,
                self.tokens, self.leases_expired, self.late_results_refused, self.error)  # fmt: skip


class _Rate:
    """Tasks finished per second since the first report."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.start: tuple[float, int] | None = None
        self.peak_leased = 0

    def snapshot(self, p: project_pb2.ProjectSummary) -> Snapshot:
        now = self.clock()
        self.peak_leased = max(self.peak_leased, p.leased)
        finished = p.done + p.dead
        if self.start is None:
            self.start = (now, finished)
        elapsed = now - self.start[0]
        rate = (finished - self.start[1]) / elapsed if elapsed > 0 else 0.0
        remaining = p.queued + p.leased
        if p.state != project_pb2.PROJECT_STATE_RUNNING or remaining == 0:
            eta: float | None = 0.0
        else:
            eta = remaining / rate if rate > 0 else None
        return Snapshot(
            project_id=p.project_id, state=_state_name(p.state), done=p.done, leased=p.leased,
            peak_leased=self.peak_leased, queued=p.queued, dead=p.dead, cancelled=p.cancelled, total=p.total,
            tokens=p.usage.prompt_tokens + p.usage.completion_tokens,
            prompt_tokens=p.usage.prompt_tokens, completion_tokens=p.usage.completion_tokens,
            elapsed_s=round(elapsed, 3), rate_per_s=round(rate, 3), eta_s=None if eta is None else round(eta, 1),
            leases_expired=p.leases_expired, late_results_refused=p.late_results_refused, error=p.error,
        )  # fmt: skip


class ProgressReporter:
    """`with ProgressReporter(sys.stderr) as show: ... show(summary) ...`

    `json_lines=None` picks by the stream: the rich display when it is a terminal, JSON lines
    otherwise. `console` replaces the rich console (tests force a terminal with it).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        json_lines: bool | None = None,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.json_lines = (not _isatty(stream)) if json_lines is None and console is None else bool(json_lines)
        self._rate = _Rate(clock)
        self._last: tuple[Any, ...] | None = None
        self._console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._drawn_at = -REDRAW_EVERY_S

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __call__(self, summary: project_pb2.ProjectSummary) -> None:
        snap = self._rate.snapshot(summary)
        if snap.key() == self._last:
            return
        self._last = snap.key()
        if self.json_lines:
            print(json.dumps(asdict(snap)), file=self.stream, flush=True)
        else:
            self._render(snap)

    def close(self) -> None:
        """Stop the live display, leaving its last frame on the terminal."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _render(self, snap: Snapshot) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

        if self._progress is None:
            from rich.console import Console

            console = self._console or Console(file=self.stream)
            self._progress = Progress(
                SpinnerColumn(finished_text="•"),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[pace]}"),
                console=console,
                refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=None, counts="", pace="")
        assert self._task is not None
        eta = "ETA ?" if snap.eta_s is None else f"ETA {_duration(snap.eta_s)}"
        from rich.markup import escape

        self._progress.update(
            self._task,
            # The id comes from the leader: shown, never obeyed (no terminal escape, no rich markup).
            description=escape(f"{terminal_safe(snap.project_id)} {snap.state}"),
            completed=snap.done + snap.dead,
            total=max(snap.total, 1),
            counts=f"done {snap.done} · at once {snap.leased} (peak {snap.peak_leased}) · queued {snap.queued} · "
            f"dead {snap.dead}",
            pace=f"{snap.rate_per_s:.2f} tasks/s · {snap.tokens:,} tokens · {eta}",
        )
        now = self._rate.clock()
        if snap.state != "running":
            self._progress.stop_task(self._task)
        if snap.state != "running" or now - self._drawn_at >= REDRAW_EVERY_S:
            self._drawn_at = now
            self._progress.refresh()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
