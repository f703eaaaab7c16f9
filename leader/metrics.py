"""The leader's Prometheus metrics (`paradecom-leader --metrics-listen HOST:PORT`).

Most numbers are read from the store when Prometheus scrapes (`_StoreCollector`), so they can never
drift from the state they describe and survive a leader restart: tasks by state, queue depth per
running project, expired leases, refused late results, dead letters and the LLM usage runners
report with their results. Only what the store does not keep is counted as it happens, through the
`LeaseObserver` hooks in `core.py`: leases granted and extended, and the time from a lease's grant
to its accepted result. Those start from zero when the leader starts.

A scrape reads one row per project (no definitions, no tasks): cheap for thousands of projects.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core import DecompositionLeader
from .scheduler import Scheduler
from .store import CANCELLED, DEAD, DONE, LEASED, QUEUED, RUNNING

TASK_STATES = (QUEUED, LEASED, DONE, DEAD, CANCELLED)
# Seconds from lease grant to accepted result: one task's LLM calls, re-asks and retries included.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Grant times kept for the latency histogram. A lease that never settles (it expired, or the task
# was dead-lettered by the lease clock) leaves its entry until the task is granted again; past this
# many the oldest are dropped, so memory stays bounded whatever happens.
MAX_TRACKED_LEASES = 100_000


class _StoreCollector(Collector):
    """Everything the store and the scheduler already know, computed at scrape time."""

    def __init__(self, leader: DecompositionLeader, scheduler: Scheduler) -> None:
        self.leader = leader
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self.leader.project_stats()
        tasks = GaugeMetricFamily("paradecom_tasks", "Tasks in each state, over all projects.", labels=["state"])
        for state in TASK_STATES:
            tasks.add_metric([state], sum(p.counts.get(state, 0) for p in stats))
        yield tasks
        projects = GaugeMetricFamily("paradecom_projects", "Projects in each state.", labels=["state"])
        for state in ("running", "done", "cancelled", "failed"):
            projects.add_metric([state], sum(p.state == state for p in stats))
        yield projects
        depth = GaugeMetricFamily(
            "paradecom_queue_depth",
            "Tasks queued (ready or waiting out a retry backoff) per running project; a project's "
            "series ends when it finishes.",
            labels=["project_id"],
        )
        for p in stats:
            if p.state == RUNNING:
                depth.add_metric([p.id], p.counts.get(QUEUED, 0))
        yield depth
        yield _counter("paradecom_leases_expired", "Leases that expired and sent their task back (or to the "
                       "dead letters).", sum(p.leases_expired for p in stats))  # fmt: skip
        yield _counter("paradecom_late_results_refused", "Results and failures refused because their lease was "
                       "no longer the task's current one.", sum(p.late_results_refused for p in stats))  # fmt: skip
        yield _counter("paradecom_dead_letters", "Tasks dead-lettered after max_attempts or a non-retryable "
                       "failure.", sum(p.counts.get(DEAD, 0) for p in stats))  # fmt: skip

        def usage(name: str) -> int:
            return sum(p.usage.get(name, 0) for p in stats)

        yield _counter("paradecom_llm_calls", "LLM calls runners reported with their results and failures.",
                       usage("calls"))  # fmt: skip
        tokens = CounterMetricFamily(
            "paradecom_llm_tokens", "LLM tokens runners reported, by kind (prompt, completion).", labels=["kind"]
        )
        tokens.add_metric(["prompt"], usage("prompt_tokens"))
        tokens.add_metric(["completion"], usage("completion_tokens"))
        yield tokens
        yield _counter("paradecom_llm_rate_limited", "HTTP 429 answers runners met, as reported with results.",
                       usage("rate_limited"))  # fmt: skip
        yield GaugeMetricFamily(
            "paradecom_llm_paused_seconds",
            "Seconds until dispatch resumes after a Retry-After a runner reported (at most 600); 0 when not "
            "paused. SetLlmBudget ends the pause.",
            value=self.scheduler.budget.paused_ms() / 1000,
        )
        yield _counter("paradecom_llm_reasks", "Re-asks after an invalid LLM answer.", usage("reasks"))
        yield _counter("paradecom_llm_cache_hits", "Tasks answered from a runner's cache.", usage("cache_hits"))
        yield _counter("paradecom_assignment_messages", "PullTask stream messages that carried assignments "
                       "(fewer than the leases granted when runners take batches).",
                       self.scheduler.assignment_messages)  # fmt: skip
        yield _counter("paradecom_result_transactions", "Store transactions that accepted results (fewer than "
                       "the results when they arrive together: group commit).",
                       self.leader.result_transactions())  # fmt: skip
        sessions = list(self.scheduler.sessions.values())
        yield GaugeMetricFamily(
            "paradecom_runners_connected", "Runners with an open PullTask stream.", value=len(sessions)
        )
        yield GaugeMetricFamily(
            "paradecom_runner_slots", "Tasks the connected runners can hold at once (sum of max_in_flight).",
            value=sum(s.max_in_flight for s in sessions),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "paradecom_desired_slots",
            "Tasks that could usefully be in flight now: min(tasks ready or in flight, what the LLM budget "
            "allows); see leader/parallelism.py.",
            value=self.scheduler.desired_slots(),
        )
        yield GaugeMetricFamily(
            "paradecom_desired_runners",
            "Runners it would take to hold paradecom_desired_slots, at the connected runners' mean "
            "max_in_flight (8 with none connected): what a runner autoscaler keys on; 0 with nothing to do.",
            value=self.scheduler.desired_runners(),
        )


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class LeaderMetrics:
    """A leader's registry and the `LeaseObserver` that feeds its live counters."""

    def __init__(self, leader: DecompositionLeader, scheduler: Scheduler) -> None:
        # Per leader, not prometheus_client's global REGISTRY: two leaders in one process stay apart.
        self.registry = CollectorRegistry()
        self.leases_granted = Counter(
            "paradecom_leases_granted", "Leases granted to runners (every attempt of every task).",
            registry=self.registry,
        )  # fmt: skip
        self.leases_extended = Counter(
            "paradecom_leases_extended", "Heartbeats that extended a lease.", registry=self.registry
        )
        self.results_accepted = Counter(
            "paradecom_results_accepted", "Results accepted (duplicates not counted).", registry=self.registry
        )
        self.task_latency = Histogram(
            "paradecom_task_latency_seconds",
            "Seconds from a lease's grant to its accepted result.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(leader, scheduler))
        self._granted_at: OrderedDict[str, float] = OrderedDict()

    # LeaseObserver (core.py).

    def granted(self, task_ids: Sequence[str]) -> None:
        self.leases_granted.inc(len(task_ids))
        now = time.monotonic()
        for task_id in task_ids:
            self._granted_at[task_id] = now
            self._granted_at.move_to_end(task_id)
        while len(self._granted_at) > MAX_TRACKED_LEASES:
            self._granted_at.popitem(last=False)

    def extended(self) -> None:
        self.leases_extended.inc()

    def settled(self, task_id: str, *, accepted: bool) -> None:
        granted_at = self._granted_at.pop(task_id, None)
        if accepted:
            self.results_accepted.inc()
            if granted_at is not None:
                self.task_latency.observe(time.monotonic() - granted_at)
