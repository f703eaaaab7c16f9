"""A runner's session (PullTaskRequest.session_id): a stream under a runner id with the session id
the leader last saw is a reconnect and keeps the leases in hand; one with a new session id is a
restarted process, and the leases held under the id end at once, so they do not fill the new
process's slots until they expire. Real leader, runner and fake-llm processes on loopback."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from helpers import Proc, Stubs, run_cli, wait_for
from test_node_runner import node_command

from paradecom.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
)

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]
# A lease outlives every wait below; the disconnect grace (half a lease) does too, so a test that
# passes did not wait for a lease of a dead stream to run out.
LEASE_S = 60
GRACE_S = LEASE_S / 2


RunnerStarter = Callable[[str, str, str, int], Proc]


@pytest.fixture(params=["python", "node"])
def runner_of_kind(request: pytest.FixtureRequest, procs: list[Proc]) -> RunnerStarter:
    """Starts the Python runner or the Node.js one (clients/node-runner): (leader, OpenAI base URL,
    runner id, concurrency) -> the process."""

    def start(leader: str, base_url: str, runner_id: str, concurrency: int) -> Proc:
        flags = ["--leader", leader, "--runner-id", runner_id, "--concurrency", str(concurrency)]
        command = [sys.executable, "-m", "paradecom.runner.main"] if request.param == "python" else node_command()
        runner = Proc([*command, *flags], env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"})
        procs.append(runner)
        return runner

    return start


def submit(leader: str, tmp_path: Path, seeds: int) -> str:
    path = tmp_path / "project.json"
    path.write_text(json.dumps({
        "name": "Sessions", "description": "Work held across runner restarts.", "max_depth": 1,
        "tasks": [{"title": f"Build component {i}"} for i in range(seeds)],
    }))  # fmt: skip
    submitted = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)])
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


def llm_in_flight(base_url: str) -> int:
    """Requests fake-llm is answering now."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return int(json.loads(response.read())["in_flight"])


def summary(projects: object, project_id: str) -> project_pb2.ProjectSummary:
    request = project_service_pb2.GetProjectRequest(project_id=project_id)
    return projects.GetProject(request, timeout=5).project  # type: ignore[attr-defined, no-any-return]


def seeds_of(projects: object, project_id: str) -> list[project_pb2.TaskNode]:
    request = project_service_pb2.GetTaskTreeRequest(project_id=project_id)
    return list(projects.GetTaskTree(request, timeout=5).tasks)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_restarted_runner_gets_tasks_at_once(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    runner_of_kind: RunnerStarter,
    stubs: Stubs,
    tmp_path: Path,
) -> None:
    """A runner (Python or Node.js) SIGKILLed while holding every lease, started again under the same --runner-id:
    the dead process's leases end when the new one connects, so the new one does the whole
    project long before the disconnect grace (or the lease) would have handed them back. Each
    lost lease is charged (attempt 2) and counted in leases_expired."""
    slow = fake_llm("--fanout", "2", "--atomic-depth", "5", "--latency", "300")
    fast = fake_llm("--fanout", "2", "--atomic-depth", "5")
    _, leader = start_leader("--lease-timeout", str(LEASE_S))
    _, projects = stubs(leader)
    victim = runner_of_kind(leader, slow, "restart-me", 4)
    project_id = submit(leader, tmp_path, seeds=4)
    wait_for(lambda: summary(projects, project_id).leased == 4, what="the victim to hold 4 leases")
    victim.signal(signal.SIGKILL)
    victim.wait()

    runner_of_kind(leader, fast, "restart-me", 4)
    done = project_pb2.PROJECT_STATE_DONE
    wait_for(lambda: summary(projects, project_id).state == done, timeout=GRACE_S - 10,
             what="the restarted runner to finish the project before the old leases' grace ends")  # fmt: skip
    finished = summary(projects, project_id)
    assert finished.total == 4 + 4 * 2 and finished.dead == 0
    assert finished.leases_expired == 4 and finished.late_results_refused == 0
    assert [t.attempts for t in seeds_of(projects, project_id)] == [2, 2, 2, 2]


class CuttableProxy:
    """A TCP proxy on loopback whose open connections can be cut at once (a network drop); it
    keeps accepting new ones, so a client that reconnects gets through."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.cuts = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            cut, self._open = self._open, []
        for s in cut:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.cuts += 1

    def close(self) -> None:
        self.server.close()
        self.cut()


@pytest.fixture
def proxy_to() -> Iterator[Callable[[str], CuttableProxy]]:
    made: list[CuttableProxy] = []

    def make(upstream: str) -> CuttableProxy:
        made.append(CuttableProxy(upstream))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.mark.slow
def test_reconnected_runner_keeps_its_leases(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    runner_of_kind: RunnerStarter,
    stubs: Stubs,
    proxy_to: Callable[[str], CuttableProxy],
    tmp_path: Path,
) -> None:
    """A runner (Python or Node.js) whose connection to the leader drops while it works reconnects with the same
    session: its leases stay its own, and the results it then submits are accepted (attempt 1,
    nothing expired or refused)."""
    # Long enough that the cut, right after the grant, lands while both tasks wait for the LLM.
    base_url = fake_llm("--fanout", "2", "--atomic-depth", "5", "--latency", "6")
    leader_proc, leader = start_leader("--lease-timeout", str(LEASE_S))
    _, projects = stubs(leader)
    proxy = proxy_to(leader)
    runner = runner_of_kind(proxy.address, base_url, "flaky-network", 2)
    project_id = submit(leader, tmp_path, seeds=2)
    wait_for(lambda: summary(projects, project_id).leased == 2, what="the runner to hold 2 leases")
    # Cut once the runner has both tasks (their calls are at fake-llm), not while the assignments are
    # still on their way: those come back only when their leases expire.
    wait_for(lambda: llm_in_flight(base_url) == 2, what="both tasks' LLM calls in flight")
    connected = sum("runner connected" in line for line in leader_proc.stderr_lines)
    proxy.cut()
    wait_for(lambda: sum("runner connected" in line for line in leader_proc.stderr_lines) > connected,
             what="the runner to open a new stream")  # fmt: skip
    done = project_pb2.PROJECT_STATE_DONE
    try:
        wait_for(lambda: summary(projects, project_id).state == done, timeout=GRACE_S - 5, what="the project")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrunner: {runner.tail(30)}\nleader: {leader_proc.tail(30)}") from None
    finished = summary(projects, project_id)
    assert finished.leases_expired == 0 and finished.late_results_refused == 0 and finished.dead == 0
    assert [t.attempts for t in seeds_of(projects, project_id)] == [1, 1]
    connects = [json.loads(line) for line in leader_proc.stderr_lines if "runner connected" in line]
    assert len(connects) >= 2 and all(c["restarted_leases_ended"] == 0 for c in connects)


def pull(
    tasks: task_service_pb2_grpc.TaskServiceStub, runner_id: str, session_id: str, max_in_flight: int
) -> grpc._CallIterator[task_service_pb2.PullTaskResponse]:
    request = task_service_pb2.PullTaskRequest(runner_id=runner_id, session_id=session_id, max_in_flight=max_in_flight)
    return tasks.PullTask(request, timeout=GRACE_S - 10)


def in_flight(leader: str, runner_id: str) -> int:
    with grpc.insecure_channel(leader) as channel:
        runners = (
            admin_service_pb2_grpc.AdminServiceStub(channel)
            .ListRunners(admin_service_pb2.ListRunnersRequest(), timeout=5)
            .runners
        )
    return sum(r.in_flight for r in runners if r.runner_id == runner_id and r.connected)


def refused(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.mark.slow
def test_session_rules_over_the_wire(
    start_leader: Callable[..., tuple[Proc, str]], stubs: Stubs, tmp_path: Path
) -> None:
    """The rule as a runner written from the proto sees it: the same session on a new stream keeps
    the leases (they still count against max_in_flight, heartbeats and results are accepted); a new
    session ends them at once (their tokens ABORTED, each counted in leases_expired) and the new
    stream is filled; an empty session is a reconnect; an over-long one is INVALID_ARGUMENT."""
    _, leader = start_leader("--lease-timeout", str(LEASE_S))
    tasks, projects = stubs(leader)
    project_id = submit(leader, tmp_path, seeds=6)
    children = [task_pb2.Subtask(key=str(i), title=f"Do part {i}") for i in (1, 2)]

    first = pull(tasks, "r", "session-1", 2)
    a1, a2 = next(first).assignment, next(first).assignment
    first.cancel()
    again = pull(tasks, "r", "session-1", 3)
    a3 = next(again).assignment
    assert in_flight(leader, "r") == 3, "the leases of the dropped stream still count"
    tasks.ExtendLease(
        task_service_pb2.ExtendLeaseRequest(task_id=a1.lease.task_id, lease_token=a1.lease.token), timeout=5
    )
    accepted = tasks.SubmitResult(task_service_pb2.SubmitResultRequest(
        task_id=a1.lease.task_id, lease_token=a1.lease.token, subtasks=children), timeout=5)  # fmt: skip
    assert accepted.duplicate is False
    a4 = next(again).assignment  # the slot a1 freed

    restarted = pull(tasks, "r", "session-2", 3)
    assert list(again) == [], "the old stream ends (OK) when a new session takes the id"
    fresh = [next(restarted).assignment for _ in range(3)]
    held = {a.lease.task_id for a in (a2, a3, a4)}
    for old in (a2, a3, a4):
        extend = task_service_pb2.ExtendLeaseRequest(task_id=old.lease.task_id, lease_token=old.lease.token)
        assert refused(partial(tasks.ExtendLease, extend, timeout=5)) == grpc.StatusCode.ABORTED
    late = task_service_pb2.SubmitResultRequest(task_id=a3.lease.task_id, lease_token=a3.lease.token, subtasks=children)
    assert refused(lambda: tasks.SubmitResult(late, timeout=5)) == grpc.StatusCode.ABORTED
    assert summary(projects, project_id).leases_expired == 3
    assert all(f.lease.attempt == (2 if f.lease.task_id in held else 1) for f in fresh)
    restarted.cancel()

    legacy = pull(tasks, "legacy", "", 1)
    b1 = next(legacy).assignment
    legacy.cancel()
    legacy_again = pull(tasks, "legacy", "", 1)
    extend = task_service_pb2.ExtendLeaseRequest(task_id=b1.lease.task_id, lease_token=b1.lease.token)
    assert tasks.ExtendLease(extend, timeout=5).expires_at_unix_ms > 0
    assert in_flight(leader, "legacy") == 1
    legacy_again.cancel()

    too_long = pull(tasks, "r", "s" * 201, 1)
    assert refused(lambda: next(too_long)) == grpc.StatusCode.INVALID_ARGUMENT
