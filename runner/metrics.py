"""A runner's Prometheus metrics (`paradecom-runner --metrics-listen HOST:PORT`).

Counted as they happen in `loop.py`: one call when a task's decomposition ends (its LLM usage),
one per LLM completion (its latency), one when the leader takes the result or the failure. They
start from zero when the runner starts; the leader's metrics hold the totals over all runners.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from paradecom.v1 import task_pb2

# Seconds of one completion as the runner waits for it, its HTTP retries and backoff included.
LLM_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class RunnerMetrics:
    """A runner's registry (its own, not prometheus_client's global one) and its counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks_done = Counter("paradecom_runner_tasks_done", "Tasks whose result the leader accepted.", registry=r)
        self.tasks_failed = Counter(
            "paradecom_runner_tasks_failed", "Tasks this runner could not decompose (FailTask sent).", registry=r
        )
        self.tasks_in_hand = Gauge("paradecom_runner_tasks_in_hand", "Leases this runner holds now.", registry=r)
        self.llm_calls = Counter("paradecom_runner_llm_calls", "LLM chat completion calls answered.", registry=r)
        self.llm_tokens = Counter(
            "paradecom_runner_llm_tokens", "LLM tokens the endpoint reported, by kind.", ["kind"], registry=r
        )
        self.rate_limited = Counter("paradecom_runner_llm_rate_limited", "HTTP 429 answers met.", registry=r)
        self.reasks = Counter("paradecom_runner_reasks", "Re-asks after an invalid answer.", registry=r)
        self.cache_hits = Counter(
            "paradecom_runner_cache_hits", "Tasks answered from the decomposition cache.", registry=r
        )
        self.llm_call_seconds = Histogram(
            "paradecom_runner_llm_call_seconds",
            "Seconds per LLM completion (its HTTP retries included), failed ones too.",
            buckets=LLM_CALL_BUCKETS,
            registry=r,
        )
        # Both kinds exist from the start, so a scrape before the first call shows 0, not nothing.
        for kind in ("prompt", "completion"):
            self.llm_tokens.labels(kind)

    def usage(self, usage: task_pb2.Usage) -> None:
        """One task's LLM usage, whether it ended in a result, a failure or an abandoned lease."""
        self.llm_calls.inc(usage.calls)
        self.llm_tokens.labels("prompt").inc(usage.prompt_tokens)
        self.llm_tokens.labels("completion").inc(usage.completion_tokens)
        self.rate_limited.inc(usage.rate_limited)
        self.reasks.inc(usage.reasks)
        self.cache_hits.inc(usage.cache_hits)
