"""The `--runners auto` algorithm (leader/parallelism.py) in isolation, and the
`paradecom_desired_runners` gauge a real leader publishes for an autoscaler."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from helpers import Proc, Stubs, run_cli, wait_for
from test_metrics import scrape, value

from paradecom import limits
from paradecom.leader.core import DecompositionLeader
from paradecom.leader.llm_budget import LlmBudget
from paradecom.leader.parallelism import MACHINE_SAMPLE_S, PER_CORE_CALLS, MachineProbe, Parallelism
from paradecom.leader.store import SqliteStore
from paradecom.project import ProjectDefinition, SeedTask
from paradecom.v1 import project_service_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def leader_with(seeds: int) -> DecompositionLeader:
    leader = DecompositionLeader(SqliteStore(":memory:"))
    leader.generate_work_queue(
        ProjectDefinition(name="P", description="d", tasks=[SeedTask(title=f"Task {i}") for i in range(seeds)])
    )
    return leader


def test_desired_follows_the_frontier_and_every_bound() -> None:
    """desired = min(tasks ready or leased, budget's AIMD cap, rpm x task seconds, machine, endpoint, cap)."""
    clock = Clock()
    leader = leader_with(40)
    budget = LlmBudget(clock=clock)
    p = Parallelism(leader, budget)
    assert p.frontier() == 40 and p.desired(100) == 40
    p.endpoint_slots = 30
    assert p.desired(100) == 30
    p.cap = 20
    assert p.desired(100) == 20
    budget.on_rate_limited(1, 0.0, in_flight=12)  # AIMD halves what was in flight
    assert budget.cap == 6 and p.desired(100) == 6
    budget.cap = None
    budget.set_limits(120, 0)  # 2 requests a second
    assert p.desired(100) == 20, "no task duration measured yet: the buckets pace alone"
    p.observe_task(3.0)  # Little's law: 2/s x 3 s = 6 in flight sustain 120 rpm
    assert p.desired(100) == 6
    budget.set_limits(0, 6_000)  # 100 tokens a second, 3 s a task, 100 tokens a task: 3 in flight
    assert p.desired(100) == 3
    assert p.desired_runners(100, 2) == 2 and p.desired_runners(100, None) == 1


def test_desired_is_zero_with_nothing_to_do_and_limits_stay_in_range() -> None:
    """No running project: desired 0 (an autoscaler may scale to zero); the limit never leaves 1..MAX."""
    p = Parallelism(DecompositionLeader(SqliteStore(":memory:")), LlmBudget())
    assert p.desired(100) == 0 and p.desired_runners(100, 8) == 0
    assert p.limit(100) == limits.MAX_AUTO_SLOTS
    p.cap = 0
    assert p.limit(100) == 1


def test_machine_bound_shrinks_under_load_and_low_memory() -> None:
    """PER_CORE_CALLS per idle core, fewer when others load the cores, at most memory / MIB_PER_CALL,
    sampled at most once per MACHINE_SAMPLE_S."""
    clock = Clock()
    load = [0.5]
    memory: list[int | None] = [10_000]
    probe = MachineProbe(cores=2, clock=clock, load=lambda: load[0], available_mib=lambda: memory[0])
    assert probe.limit() == 2 * PER_CORE_CALLS
    load[0] = 2.0  # one core's worth of other work
    assert probe.limit() == 2 * PER_CORE_CALLS, "not sampled again yet"
    clock.now += MACHINE_SAMPLE_S
    assert probe.limit() == PER_CORE_CALLS
    load[0], memory[0] = 0.0, 40
    clock.now += MACHINE_SAMPLE_S
    assert probe.limit() == 20
    load[0], memory[0] = 50.0, None
    clock.now += MACHINE_SAMPLE_S
    assert probe.limit() == PER_CORE_CALLS // 2, "a saturated machine still gets half a core's worth"


def test_leader_publishes_desired_runners(
    start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs, tmp_path: Path
) -> None:
    """A leader with 20 queued tasks and no runner asks for ceil(20 / 8) = 3 runners of the default
    size; once the project is cancelled, for 0."""
    leader, address = start_leader("--metrics-listen", "127.0.0.1:0")
    metrics = leader.metrics_address()
    assert value(scrape(metrics), "paradecom_desired_runners") == 0
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "P", "description": "d", "tasks": [{"title": f"T{i}"} for i in range(20)]}))
    submitted = run_cli([sys.executable, "-m", "paradecom.client.cli", "submit", "--leader", address, str(path)])
    assert submitted.returncode == 0, submitted.stderr
    samples = scrape(metrics)
    assert value(samples, "paradecom_desired_slots") == 20
    assert value(samples, "paradecom_desired_runners") == 3
    _, projects = stubs(address)
    projects.CancelProject(project_service_pb2.CancelProjectRequest(project_id=submitted.stdout.strip()))
    wait_for(lambda: value(scrape(metrics), "paradecom_desired_runners") == 0, 10, what="desired runners 0")


def test_compose_autoscaler_scales_to_the_gauge(start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path) -> None:
    """docker/autoscale/compose-autoscale.sh reads a real leader's gauge and scales the runner service
    to it within its bounds (DRY_RUN prints the compose command it would run)."""
    script = Path(__file__).resolve().parent.parent / "docker" / "autoscale" / "compose-autoscale.sh"
    leader, address = start_leader("--metrics-listen", "127.0.0.1:0")
    url = f"http://{leader.metrics_address()}/metrics"
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "P", "description": "d", "tasks": [{"title": f"T{i}"} for i in range(20)]}))
    assert (
        run_cli([sys.executable, "-m", "paradecom.client.cli", "submit", "--leader", address, str(path)]).returncode
        == 0
    )

    def scale(**env: str) -> str:
        done = run_cli(["bash", str(script)], env={"METRICS_URL": url, "ONCE": "1", "DRY_RUN": "1", **env})
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert scale() == "docker compose -f docker/compose.yaml up -d --no-recreate --scale runner=3 runner"
    assert scale(MAX_RUNNERS="2").endswith("--scale runner=2 runner")
    bad = run_cli(["bash", str(script)], env={"METRICS_URL": url, "MIN_RUNNERS": "x"})
    assert bad.returncode == 2 and "MIN_RUNNERS must be a whole number" in bad.stderr


def test_compose_autoscaler_sends_the_token(start_leader: Callable[..., tuple[Proc, str]], tmp_path: Path) -> None:
    """A leader with a token answers /metrics only with it: the autoscaler reads it from TOKEN_FILE
    (as compose.yaml's secret), and without it says it cannot read the gauge and scales nothing."""
    script = Path(__file__).resolve().parent.parent / "docker" / "autoscale" / "compose-autoscale.sh"
    token_file = tmp_path / "token"
    token_file.write_text("autoscale-token-0123456789\n")
    leader, _ = start_leader("--metrics-listen", "127.0.0.1:0", "--auth-token-file", str(token_file))
    env = {"METRICS_URL": f"http://{leader.metrics_address()}/metrics", "ONCE": "1", "DRY_RUN": "1"}
    with_token = run_cli(["bash", str(script)], env={**env, "TOKEN_FILE": str(token_file)})
    assert with_token.returncode == 0 and with_token.stdout.strip().endswith("--scale runner=1 runner"), with_token
    without = run_cli(["bash", str(script)], env=env)
    assert without.stdout == "" and "cannot read paradecom_desired_runners" in without.stderr, without


def test_kubernetes_examples_key_on_the_gauge() -> None:
    """The KEDA ScaledObject and the HPA parse as YAML, target the runner Deployment and read
    paradecom_desired_runners, a metric the leader serves (test_leader_publishes_desired_runners)."""
    import yaml

    folder = Path(__file__).resolve().parent.parent / "docker" / "autoscale"
    keda = yaml.safe_load((folder / "keda-scaledobject.yaml").read_text())
    assert keda["kind"] == "ScaledObject" and keda["spec"]["scaleTargetRef"]["name"] == "paradecom-runner"
    assert keda["spec"]["triggers"][0]["metadata"]["query"] == "max(paradecom_desired_runners)"
    hpa = yaml.safe_load((folder / "hpa.yaml").read_text())
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "paradecom_desired_runners"
