"""The leader as guardian of the LLM budget, end to end: fake-llm enforces a real request limit
(a sliding window, shortened to seconds so the test is quick) and counts its 429s."""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Proc, run_cli

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def stats(base_url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def flat_project(tmp_path: Path, seeds: int) -> Path:
    path = tmp_path / "flat.json"
    tasks = [{"title": f"Implement part {i}"} for i in range(seeds)]
    path.write_text(json.dumps({"name": "Flat", "description": "Many seeds.", "tasks": tasks, "max_depth": 1}))
    return path


@pytest.mark.slow
def test_budget_under_the_endpoint_limit_means_no_429(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """Endpoint: 20 requests per 5 s (240 a minute). Leader budget: 200 a minute. Sixteen slots
    would go much faster, yet the endpoint never answers 429 and the project completes."""
    base_url = fake_llm("--rpm", "20", "--rpm-window", "5", "--fanout", "2", "--atomic-depth", "5")
    _, leader = start_leader("--llm-rpm", "200")
    for _ in range(2):
        start_runner(leader, base_url, "--concurrency", "8", "--no-cache")
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(flat_project(tmp_path, 24))]).stdout.strip()
    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait"])
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert tree["project"]["counts"]["total"] == 24 * 3 and tree["project"]["counts"]["dead"] == 0
    seen = stats(base_url)
    assert seen["requests"] == 24 and seen["rate_limited"] == 0


@pytest.mark.slow
def test_without_a_budget_adaptive_backoff_brings_429s_down(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """Endpoint: 10 requests per 2 s, answers after 1 s; 16 slots and no budget. Runners report their 429s, the
    leader halves what it lets be in flight and pauses for Retry-After: the share of 429s in the
    last third of the run is below the first third's, and the project completes."""
    # No x-ratelimit headers: the leader learns the limit from 429s alone.
    limit = ["--rpm", "10", "--rpm-window", "2", "--no-rate-limit-headers"]
    base_url = fake_llm(*limit, "--latency", "1", "--fanout", "2", "--atomic-depth", "5")
    _, leader = start_leader("--max-attempts", "20")
    for _ in range(2):
        start_runner(leader, base_url, "--concurrency", "8", "--no-cache")
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            s = stats(base_url)
            samples.append((s["requests"], s["rate_limited"]))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(flat_project(tmp_path, 40))]).stdout.strip()
        result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait"], timeout=300)
    finally:
        done.set()
        sampler.join(5)
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert tree["project"]["counts"]["dead"] == 0 and tree["project"]["counts"]["total"] == 120
    usage = tree["project"]["usage"]
    assert usage["rate_limited"] > 0, "the endpoint's limit was never met: the test proves nothing"

    total_requests = samples[-1][0]
    third = total_requests / 3

    def share(lo: float, hi: float) -> float:
        """429s per request among the requests numbered lo..hi (read off the samples)."""
        inside = [(r, q) for r, q in samples if lo <= r <= hi]
        (r0, q0), (r1, q1) = inside[0], inside[-1]
        return (q1 - q0) / max(1, r1 - r0)

    # The first stretch covers at least the first round (both runners' 16 slots at once): that is
    # where the endpoint's limit is met, and the requests are sampled only every 0.1 s.
    first, last = share(0, max(third, 16)), share(2 * third, total_requests)
    assert last < first, (first, last, samples)
    budget = run_cli([*PARADECOM, "budget", "--leader", leader]).stdout
    assert "rate_limited=0" not in budget


def project_tree(tmp_path: Path) -> Path:
    path = tmp_path / "tree.json"
    path.write_text(json.dumps({"name": "Tree", "description": "One seed, three levels.", "max_depth": 3,
                                "tasks": [{"title": "Build the shop"}]}))  # fmt: skip
    return path


@pytest.mark.parametrize("headers", [True, False], ids=["budget-stated", "budget-unstated"])
@pytest.mark.slow
def test_auto_keeps_to_the_budget_the_endpoint_states(
    fake_llm: Callable[..., str], tmp_path: Path, headers: bool
) -> None:
    """`paradecom run` with no --llm-rpm against an endpoint allowing 6 requests per 2 s that says so
    on every answer (x-ratelimit-remaining/reset-requests, as OpenAI does): the 16 calls of the last
    level (21 calls in all) wait for room instead of meeting 429s. The same endpoint without the headers draws 429s,
    which shows the pacing is what kept them away."""
    flags = ["--rpm", "6", "--rpm-window", "2", "--latency", "0.2", "--fanout", "4", "--atomic-depth", "5"]
    base_url = fake_llm(*flags, *([] if headers else ["--no-rate-limit-headers"]))
    result = run_cli(
        [*PARADECOM, "run", str(project_tree(tmp_path)), "--no-cache", "--format", "json", "--max-attempts", "20"],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["project"]["counts"]["total"] == 1 + 4 + 16 + 64
    seen = stats(base_url)
    assert seen["ok"] == 21
    if headers:
        assert seen["rpm_limited"] == 0
    else:
        assert seen["rpm_limited"] > 0
