"""Prometheus metrics, end to end: real leader, runners and fake-llm with `--metrics-listen
127.0.0.1:0`, scraped over HTTP during and after a run."""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from helpers import Proc, Stubs, run_cli, wait_for
from prometheus_client.parser import text_string_to_metric_families

from paradecom.v1 import project_pb2, project_service_pb2, task_service_pb2

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def submit(leader: str, tmp_path: Path, **fields: object) -> str:
    path = tmp_path / "project.json"
    path.write_text(json.dumps({"name": "Metrics", "description": "A project to count.", **fields}))
    done = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_counts_move_with_a_run(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """Queued before any runner, then leased, then done: the gauges follow; at the end leases
    granted == results accepted == what the runners say they did, tokens were counted, the queue
    is empty, and the latency histogram has one observation per result."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "1.2")
    leader_proc, leader = start_leader("--max-depth", "2", "--lease-timeout", "3", "--metrics-listen", "127.0.0.1:0")
    assert not any(line.startswith("metrics") for line in leader_proc.stdout_lines), "stdout stays `listening` only"
    m = leader_proc.metrics_address()
    assert m.startswith("127.0.0.1:") and not m.endswith(":0")

    project_id = submit(leader, tmp_path)
    before = scrape(m)
    assert value(before, "paradecom_queue_depth", project_id=project_id) == 1
    assert value(before, "paradecom_tasks", state="queued") == 1
    assert value(before, "paradecom_runners_connected") == 0
    assert value(before, "paradecom_leases_granted_total") == 0

    runners = [
        start_runner(leader, base_url, "--concurrency", "2", "--metrics-listen", "127.0.0.1:0") for _ in range(2)
    ]
    runner_metrics = [r.metrics_address() for r in runners]

    def leased_with_both_connected() -> Samples | None:
        s = scrape(m)
        busy = (value(s, "paradecom_tasks", state="leased") or 0) >= 1
        return s if busy and value(s, "paradecom_runners_connected") == 2 else None

    during = wait_for(leased_with_both_connected, what="a task leased, both runners connected")
    assert value(during, "paradecom_runner_slots") == 4
    assert (value(during, "paradecom_leases_granted_total") or 0) >= 1

    wait_for(lambda: value(scrape(m), "paradecom_projects", state="done") == 1, timeout=60, what="project done")
    after = scrape(m)
    # 1 root + 3 children decomposed; the 9 grandchildren are leaves at max depth, never leased.
    assert value(after, "paradecom_leases_granted_total") == 4
    assert value(after, "paradecom_results_accepted_total") == 4
    assert value(after, "paradecom_tasks", state="done") == 13
    assert value(after, "paradecom_tasks", state="queued") == 0
    assert value(after, "paradecom_tasks", state="leased") == 0
    assert value(after, "paradecom_queue_depth", project_id=project_id) is None, "a finished project has no queue"
    assert value(after, "paradecom_leases_expired_total") == 0
    assert value(after, "paradecom_late_results_refused_total") == 0
    assert value(after, "paradecom_dead_letters_total") == 0
    assert value(after, "paradecom_llm_calls_total") == 4
    assert (value(after, "paradecom_llm_tokens_total", kind="prompt") or 0) > 0
    assert (value(after, "paradecom_llm_tokens_total", kind="completion") or 0) > 0
    assert value(after, "paradecom_llm_rate_limited_total") == 0
    assert value(after, "paradecom_task_latency_seconds_count") == 4
    # Each task waits 1.2 s on the LLM; heartbeats come every second (a third of the lease).
    assert (value(after, "paradecom_leases_extended_total") or 0) >= 1

    per_runner = [scrape(a) for a in runner_metrics]
    assert sum(value(s, "paradecom_runner_tasks_done_total") or 0 for s in per_runner) == 4
    assert sum(value(s, "paradecom_runner_llm_calls_total") or 0 for s in per_runner) == 4
    assert sum(value(s, "paradecom_runner_llm_call_seconds_count") or 0 for s in per_runner) == 4
    assert sum(value(s, "paradecom_runner_tasks_failed_total") or 0 for s in per_runner) == 0
    runner_prompt = sum(value(s, "paradecom_runner_llm_tokens_total", kind="prompt") or 0 for s in per_runner)
    assert runner_prompt == value(after, "paradecom_llm_tokens_total", kind="prompt"), "both ends count the same"
    assert all(value(s, "paradecom_runner_tasks_in_hand") == 0 for s in per_runner)


@pytest.mark.slow
def test_killed_runner_stale_result_and_dead_letter_are_counted(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    stubs: Stubs,
    tmp_path: Path,
) -> None:
    """A runner SIGKILLed with a lease: leases expired rises and it is no longer connected. The
    next holder drops its stream and stops heartbeating: its lease expires too, the task is
    dead-lettered (max attempts 2), and its result sent afterwards is refused and counted."""
    base_url = fake_llm("--latency", "60")
    leader_proc, leader = start_leader("--lease-timeout", "2", "--max-attempts", "2", "--metrics-listen", "127.0.0.1:0")
    m = leader_proc.metrics_address()
    tasks_stub, projects = stubs(leader)
    project_id = submit(leader, tmp_path, max_depth=1)

    victim = start_runner(leader, base_url, "--concurrency", "1", "--metrics-listen", "127.0.0.1:0")
    victim_metrics = victim.metrics_address()
    wait_for(lambda: value(scrape(m), "paradecom_tasks", state="leased") == 1, what="the victim to hold the task")
    wait_for(lambda: value(scrape(victim_metrics), "paradecom_runner_tasks_in_hand") == 1, what="runner in hand")
    assert value(scrape(m), "paradecom_runners_connected") == 1
    victim.signal(signal.SIGKILL)
    victim.wait()
    wait_for(lambda: value(scrape(m), "paradecom_leases_expired_total") == 1, what="the victim's lease to expire")
    assert value(scrape(m), "paradecom_runners_connected") == 0

    # By hand: take the task (attempt 2), then drop the stream without a heartbeat or a result.
    stream = tasks_stub.PullTask(task_service_pb2.PullTaskRequest(runner_id="by-hand", max_in_flight=1), timeout=30)
    lease = next(stream).assignment.lease
    assert lease.attempt == 2
    stream.cancel()
    wait_for(lambda: value(scrape(m), "paradecom_leases_expired_total") == 2, what="the second lease to expire")
    after = scrape(m)
    assert value(after, "paradecom_dead_letters_total") == 1
    assert value(after, "paradecom_tasks", state="dead") == 1
    assert value(after, "paradecom_leases_granted_total") == 2
    assert value(after, "paradecom_late_results_refused_total") == 0

    with pytest.raises(grpc.RpcError) as refused:
        tasks_stub.SubmitResult(
            task_service_pb2.SubmitResultRequest(
                task_id=lease.task_id, lease_token=lease.token, stop_reason="too late"
            ),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.ABORTED
    final = scrape(m)
    assert value(final, "paradecom_late_results_refused_total") == 1
    assert value(final, "paradecom_results_accepted_total") == 0
    state = projects.GetProject(project_service_pb2.GetProjectRequest(project_id=project_id), timeout=5).project.state
    assert state != project_pb2.PROJECT_STATE_RUNNING, "the project finishes despite the dead letter"


@pytest.mark.slow
def test_metrics_listen_bad_address_is_one_line(start_leader: Callable[..., tuple[Proc, str]]) -> None:
    """An unusable --metrics-listen (the leader's own gRPC port, already bound) is one line, exit 2."""
    _, leader = start_leader()
    done = run_cli(
        [sys.executable, "-m", "paradecom.leader.main", "--listen", "127.0.0.1:0", "--db", ":memory:",
         "--metrics-listen", leader],
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("paradecom-leader: error: cannot serve metrics on"), done.stderr
    assert "Traceback" not in done.stderr
    taken = run_cli(
        [sys.executable, "-m", "paradecom.runner.main", "--leader", leader, "--metrics-listen", leader],
        env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
        timeout=30,
    )
    assert taken.returncode == 2, taken.stderr
    assert taken.stderr.strip().splitlines()[-1].startswith("paradecom-runner: error: cannot serve metrics on")
    assert "Traceback" not in taken.stderr
    bad = run_cli([sys.executable, "-m", "paradecom.runner.main", "--leader", leader, "--metrics-listen", "nope"])
    assert bad.returncode == 2 and "--metrics-listen" in bad.stderr and "Traceback" not in bad.stderr


def test_readme_lists_every_metric(tmp_path: Path) -> None:
    """Every metric a leader and a runner expose is named in the README's Metrics section."""
    from prometheus_client import generate_latest

    from paradecom.leader.core import DecompositionLeader
    from paradecom.leader.metrics import LeaderMetrics
    from paradecom.leader.scheduler import Scheduler
    from paradecom.leader.store import SqliteStore
    from paradecom.runner.metrics import RunnerMetrics

    store = SqliteStore(":memory:")
    try:
        leader = DecompositionLeader(store)
        registries = [LeaderMetrics(leader, Scheduler(leader)).registry, RunnerMetrics().registry]
        names = {
            family.name
            for registry in registries
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            if not family.name.endswith("_created")  # prometheus_client's start-time samples
        }
    finally:
        store.close()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Metrics") : readme.index("## Guarantees")]
    assert len(names) >= 25
    for name in sorted(names):
        # The parser names counters without `_total`; the README gives the exposed name.
        shown = f"`{name}_total" if f"`{name}_total" in section else f"`{name}"
        assert shown in section, name


@pytest.mark.slow
def test_rate_limits_and_calls_are_counted_at_both_ends(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """fake-llm answers some requests 429: the runner's and the leader's 429 counters agree with
    what fake-llm refused, and answered calls + 429s are every request it got."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--rate-limit-rate", "0.4", "--seed", "3")
    leader_proc, leader = start_leader("--metrics-listen", "127.0.0.1:0")
    m = leader_proc.metrics_address()
    runner = start_runner(leader, base_url, "--concurrency", "2", "--metrics-listen", "127.0.0.1:0")
    r = runner.metrics_address()
    submit(leader, tmp_path, tasks=[{"title": f"Part {i}"} for i in range(6)], max_depth=1)
    wait_for(lambda: value(scrape(m), "paradecom_projects", state="done") == 1, timeout=90, what="project done")
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=5) as resp:
        seen = json.loads(resp.read())
    at_leader, at_runner = scrape(m), scrape(r)
    assert seen["rate_limited"] > 0, "no 429 was injected: the test proves nothing"
    assert value(at_leader, "paradecom_llm_rate_limited_total") == seen["rate_limited"]
    assert value(at_runner, "paradecom_runner_llm_rate_limited_total") == seen["rate_limited"]
    calls = value(at_leader, "paradecom_llm_calls_total")
    assert calls == value(at_runner, "paradecom_runner_llm_calls_total")
    assert calls is not None and calls + seen["rate_limited"] == seen["requests"]
