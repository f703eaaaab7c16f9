"""A ParaDecom cluster on loopback for one measurement: fake-llm, a `paradecom-leader` on a fresh
SQLite file, and `paradecom-runner` processes, with a blocking gRPC client to submit and watch.

Runners never use the decomposition cache (`--no-cache`, and a private cache directory besides), so
every task costs one real LLM round trip through the openai client.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from paradecom import limits
from paradecom.grpc_options import CHANNEL_OPTIONS
from paradecom.v1 import project_pb2, project_service_pb2, project_service_pb2_grpc

from .procs import BenchError, Service, cpu_seconds, memory, python_module, wait_for

TERMINAL = {
    project_pb2.PROJECT_STATE_DONE,
    project_pb2.PROJECT_STATE_CANCELLED,
    project_pb2.PROJECT_STATE_FAILED,
}


def start_fake_llm(workdir: Path, name: str, latency: float, fanout: int, atomic_depth: int = 100) -> Service:
    svc = Service(
        name,
        python_module(
            "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", "--latency", f"{latency:g}",
            "--fanout", str(fanout), "--atomic-depth", str(atomic_depth), "--log-format", "json",
        ),
        cwd=workdir,
    )  # fmt: skip
    svc.address()
    return svc


def fake_llm_stats(svc: Service) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://{svc.address()}/stats", timeout=10) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def fake_llm_reset(svc: Service) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://{svc.address()}/stats/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10):
        pass


def flat_project(k: int, name: str = "Flat benchmark", title: str = "Build component") -> project_pb2.ProjectDefinition:
    """K seed tasks, max_depth 1: every task is one LLM call whose children are leaves."""
    return project_pb2.ProjectDefinition(
        name=name,
        description="A benchmark project: every seed task is decomposed once, its children are leaves.",
        max_depth=1,
        tasks=[
            project_pb2.TaskSpec(
                title=f"{title} {i:05d}",
                description=f"Component {i} of {k}: one LLM call, no recursion.",
            )
            for i in range(1, k + 1)
        ],
    )


@dataclass
class RunResult:
    """One project run from submission to its end, timed three ways."""

    summary: project_pb2.ProjectSummary
    client_wall_s: float  # from just before SubmitProject to the watch stream saying it ended
    leader_wall_s: float  # the leader's own created -> finished
    leader_cpu_s: float  # the leader process's CPU time over the run
    runner_cpu_s: float
    fake_llm_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class Cluster:
    """`with Cluster(...) as c: c.run(project)`; every process is stopped on the way out."""

    def __init__(
        self,
        *,
        latency: float,
        fanout: int = 3,
        runners: Sequence[int] = (),
        lease_timeout: float = limits.DEFAULT_LEASE_TIMEOUT_S,
        atomic_depth: int = 100,
        leader_flags: Sequence[str] = (),
        workdir: Path | None = None,
        runner_log_level: str = "warning",
    ) -> None:
        self.runner_log_level = runner_log_level
        self.latency = latency
        self.fanout = fanout
        self.runner_concurrency = list(runners)
        self.lease_timeout = lease_timeout
        self.atomic_depth = atomic_depth
        self.leader_flags = list(leader_flags)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir = workdir
        self.services: list[Service] = []
        self.fake: Service | None = None
        self.leader: Service | None = None
        self.runners: list[Service] = []
        self.address = ""
        self.metrics_address = ""
        self._channel: grpc.Channel | None = None
        self.projects: project_service_pb2_grpc.ProjectServiceStub | None = None

    # --- processes ------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="paradecom-bench-")
            self.workdir = Path(self._tmp.name)
        (self.workdir / "cache").mkdir(exist_ok=True)
        self.fake = start_fake_llm(self.workdir, "fake-llm", self.latency, self.fanout, self.atomic_depth)
        self.services.append(self.fake)
        self.leader = Service(
            "leader",
            python_module(
                "paradecom.leader.main", "--listen", "127.0.0.1:0", "--db", str(self.workdir / "leader.db"),
                "--lease-timeout", f"{self.lease_timeout:g}", "--log-format", "json", "--log-level", "info",
                "--metrics-listen", "127.0.0.1:0", *self.leader_flags,
            ),
            cwd=self.workdir,
        )  # fmt: skip
        self.leader.count('"runner connected"')
        self.services.append(self.leader)
        self.address = self.leader.address()
        self.metrics_address = self.leader.metrics_address()
        self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self.projects = project_service_pb2_grpc.ProjectServiceStub(self._channel)
        for concurrency in self.runner_concurrency:
            self.add_runner(concurrency)
        self.wait_runners(len(self.runner_concurrency))

    def add_runner(self, concurrency: int, fake: Service | None = None, name: str = "") -> Service:
        assert self.workdir is not None and self.fake is not None
        base = fake or self.fake
        runner = Service(
            name or f"runner-{len(self.runners) + 1}",
            python_module(
                "paradecom.runner.main", "--leader", self.address, "--concurrency", str(concurrency),
                "--no-cache", "--log-format", "json", "--log-level", self.runner_log_level, "--drain-timeout", "5",
            ),
            env={
                "OPENAI_BASE_URL": f"http://{base.address()}/v1",
                "OPENAI_API_KEY": "bench",
                "PARADECOM_CACHE_DIR": str(self.workdir / "cache"),
            },
            cwd=self.workdir,
        )  # fmt: skip
        self.runners.append(runner)
        self.services.append(runner)
        return runner

    def stop_runner(self, runner: Service) -> None:
        """SIGTERM a runner (it drains) and forget it."""
        runner.stop()
        self.runners.remove(runner)
        self.services.remove(runner)

    def wait_runners(self, count: int, timeout: float = 60.0) -> None:
        """Wait until the leader has logged `count` runner connections in all."""
        assert self.leader is not None

        def connected() -> bool:
            for svc in self.services:
                svc.check_alive()
            return self.leader is not None and self.leader.matches['"runner connected"'] >= count

        wait_for(connected, timeout, f"{count} runners to connect")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        # Runners first, so they release their leases to a leader that is still there.
        for svc in reversed(self.services):
            with contextlib.suppress(Exception):
                svc.stop()
        self.services.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def pids(self) -> list[int]:
        return [s.pid for s in self.services if s.alive()]

    def leader_cpu(self) -> float:
        assert self.leader is not None
        return cpu_seconds(self.leader.pid)

    def leader_memory(self) -> dict[str, int]:
        assert self.leader is not None
        return memory(self.leader.pid)

    def wire_counters(self) -> dict[str, float]:
        """The leader's counters of leases and results against the messages, calls and
        transactions that carried them (its /metrics), to show how much batching happened."""
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        wanted = {
            "paradecom_leases_granted_total", "paradecom_assignment_messages_total",
            "paradecom_results_accepted_total", "paradecom_result_transactions_total",
        }  # fmt: skip
        return {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in wanted
        }

    def _cpu(self, services: Sequence[Service]) -> float:
        total = 0.0
        for s in services:
            with contextlib.suppress(OSError):
                total += cpu_seconds(s.pid)
        return total

    # --- projects -------------------------------------------------------------------------------

    def submit(self, project: project_pb2.ProjectDefinition) -> str:
        assert self.projects is not None
        request = project_service_pb2.SubmitProjectRequest(project=project)
        return str(self.projects.SubmitProject(request, timeout=120).project_id)

    def get(self, project_id: str) -> project_pb2.ProjectSummary:
        assert self.projects is not None
        request = project_service_pb2.GetProjectRequest(project_id=project_id)
        return self.projects.GetProject(request, timeout=60).project

    def list_projects(self) -> list[project_pb2.ProjectSummary]:
        assert self.projects is not None
        out: list[project_pb2.ProjectSummary] = []
        token = ""
        while True:
            page = self.projects.ListProjects(
                project_service_pb2.ListProjectsRequest(page_size=1000, page_token=token), timeout=60
            )
            out.extend(page.projects)
            token = page.next_page_token
            if not token:
                return out

    def watch(self, project_id: str, timeout: float) -> Iterator[project_pb2.ProjectSummary]:
        assert self.projects is not None
        request = project_service_pb2.WatchProjectRequest(project_id=project_id)
        for event in self.projects.WatchProject(request, timeout=timeout):
            yield event.project

    def wait_done(self, project_id: str, timeout: float) -> project_pb2.ProjectSummary:
        """Follow the project's watch stream until it ends; BenchError if it does not end DONE."""
        last: project_pb2.ProjectSummary | None = None
        try:
            for summary in self.watch(project_id, timeout):
                last = summary
                if summary.state in TERMINAL:
                    break
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            for svc in self.services:
                svc.check_alive()
            progress = f"{last.done} of {last.total} done" if last else "no progress seen"
            raise BenchError(f"watching project {project_id} failed ({code}): {progress}") from None
        if last is None or last.state != project_pb2.PROJECT_STATE_DONE:
            raise BenchError(f"project {project_id} did not finish: {last}")
        return last

    def tree(self, project_id: str) -> project_service_pb2.GetTaskTreeResponse:
        assert self.projects is not None
        request = project_service_pb2.GetTaskTreeRequest(project_id=project_id)
        return self.projects.GetTaskTree(request, timeout=300)

    def warm_up(self) -> None:
        """One task per slot, run before a measurement: each runner makes its first LLM calls (new
        connections, the openai client's lazy set-up, the runner's structured-output probe) here,
        so the measurement sees runners in their steady state, as a standing fleet is."""
        slots = sum(self.runner_concurrency)
        if slots:
            project_id = self.submit(flat_project(slots, name="Warm-up", title="Warm up component"))
            self.wait_done(project_id, 600)

    def run(self, project: project_pb2.ProjectDefinition, timeout: float = 1_800.0) -> RunResult:
        """Submit `project` and wait for it to end; CPU of each kind of process over the run."""
        assert self.fake is not None
        wire0 = self.wire_counters()
        leader0 = self.leader_cpu()
        runners0 = self._cpu(self.runners)
        fake0 = self._cpu([self.fake])
        t0 = time.time()
        project_id = self.submit(project)
        summary = self.wait_done(project_id, timeout)
        t1 = time.time()
        leader_cpu = self.leader_cpu() - leader0
        wire = {name: value - wire0.get(name, 0.0) for name, value in self.wire_counters().items()}
        return RunResult(
            summary=summary,
            client_wall_s=t1 - t0,
            leader_wall_s=(summary.finished_at_unix_ms - summary.created_at_unix_ms) / 1000,
            leader_cpu_s=leader_cpu,
            runner_cpu_s=self._cpu(self.runners) - runners0,
            fake_llm_cpu_s=self._cpu([self.fake]) - fake0,
            extra={
                "assignments_per_message": _ratio(wire, "leases_granted", "assignment_messages"),
                "results_per_transaction": _ratio(wire, "results_accepted", "result_transactions"),
            },
        )


def _ratio(counters: dict[str, float], items: str, carriers: str) -> float | None:
    carried = counters.get(f"paradecom_{carriers}_total", 0.0)
    return round(counters.get(f"paradecom_{items}_total", 0.0) / carried, 2) if carried else None


def check_flat(summary: project_pb2.ProjectSummary, k: int, fanout: int) -> None:
    """A flat run is right when every seed was decomposed once and nothing failed or was redone."""
    expected_total = k * (1 + fanout)
    problems = []
    if summary.total != expected_total or summary.done != expected_total:
        problems.append(f"{summary.done} done of {summary.total} tasks, expected {expected_total}")
    if summary.dead or summary.leases_expired or summary.late_results_refused:
        problems.append(
            f"dead={summary.dead} leases_expired={summary.leases_expired} "
            f"late_results_refused={summary.late_results_refused}"
        )
    if summary.usage.calls != k or summary.usage.cache_hits or summary.usage.reasks:
        problems.append(
            f"LLM calls={summary.usage.calls} (expected {k}) cache_hits={summary.usage.cache_hits} "
            f"reasks={summary.usage.reasks}"
        )
    if problems:
        raise BenchError("flat run is wrong: " + "; ".join(problems))


def walk(nodes: Sequence[project_pb2.TaskNode]) -> Iterator[project_pb2.TaskNode]:
    for node in nodes:
        yield node
        yield from walk(node.children)
