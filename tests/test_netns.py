"""Across hosts: the leader and a runner in two Linux network namespaces joined by a veth pair,
talking over 192.0.2.0/24 (TEST-NET-1, only inside the namespaces this test makes), and the
runner's link cut in the middle of a lease.

    namespace A: leader (192.0.2.1), a watcher polling it, later a second runner + its fake-llm
    namespace B: runner B (192.0.2.2) and its own fake-llm on B's loopback

Needs root and `ip`; without them the test is skipped with the reason. The namespaces are always
deleted afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, wait_for

LEADER_IP = "192.0.2.1"
RUNNER_IP = "192.0.2.2"
PY = sys.executable

# Runs in namespace A: prints one JSON line per project whenever its counters change; stops by
# itself after argv[2] seconds.
WATCHER = r"""
import json, sys, time, grpc
from paradecom.v1 import project_service_pb2 as ps, project_service_pb2_grpc as psg
stub = psg.ProjectServiceStub(grpc.insecure_channel(sys.argv[1]))
last, deadline = {}, time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        projects = stub.ListProjects(ps.ListProjectsRequest(page_size=100), timeout=5).projects
    except grpc.RpcError:
        projects = []
    for p in projects:
        row = {"id": p.project_id, "state": p.state, "leased": p.leased, "done": p.done, "total": p.total,
               "leases_expired": p.leases_expired, "late_results_refused": p.late_results_refused}
        if last.get(p.project_id) != row:
            last[p.project_id] = row
            print(json.dumps(row), flush=True)
    time.sleep(0.1)
"""


@dataclass
class Namespaces:
    a: str
    b: str
    veth_a: str
    veth_b: str

    def exec(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    """Two fresh namespaces joined by a veth pair made inside them (nothing in the host's own
    namespace), addressed 192.0.2.1 and 192.0.2.2; skip with the reason when that is impossible."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): cannot make network namespaces")
    if os.geteuid() != 0:
        pytest.skip(f"network namespaces need root; running as uid {os.geteuid()}")
    tag = secrets.token_hex(3)
    ns = Namespaces(a=f"pdc-a-{tag}", b=f"pdc-b-{tag}", veth_a=f"pdca{tag}", veth_b=f"pdcb{tag}")
    made: list[str] = []
    try:
        steps = [
            ("netns", "add", ns.a),
            ("netns", "add", ns.b),
            ("link", "add", ns.veth_a, "netns", ns.a, "type", "veth", "peer", "name", ns.veth_b, "netns", ns.b),
            ("-n", ns.a, "addr", "add", f"{LEADER_IP}/24", "dev", ns.veth_a),
            ("-n", ns.b, "addr", "add", f"{RUNNER_IP}/24", "dev", ns.veth_b),
            ("-n", ns.a, "link", "set", "lo", "up"),
            ("-n", ns.b, "link", "set", "lo", "up"),
            ("-n", ns.a, "link", "set", ns.veth_a, "up"),
            ("-n", ns.b, "link", "set", ns.veth_b, "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                reason = f"cannot set up network namespaces: `ip {' '.join(step)}` failed: {done.stderr.strip()}"
                print(reason)
                pytest.skip(reason)
            if step[:2] == ("netns", "add"):
                made.append(step[2])
        yield ns
    finally:
        for name in made:
            _ip("netns", "del", name)  # deletes the veth pair with it
        left = _ip("netns", "list").stdout
        assert ns.a not in left and ns.b not in left, f"namespaces left behind: {left}"


def _latest(watcher: Proc, project_id: str) -> dict[str, Any]:
    rows = [json.loads(line) for line in watcher.stdout_lines if line.startswith("{")]
    mine = [r for r in rows if r["id"] == project_id]
    return mine[-1] if mine else {}


def _cli(ns: Namespaces, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ns.exec(ns.a, PY, "-m", "paradecom.client.cli", *args), capture_output=True, text=True, timeout=120
    )


def _submit(ns: Namespaces, leader: str, path: Path) -> str:
    done = _cli(ns, "submit", "--leader", leader, str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runner_cut_off_mid_lease_is_fenced_and_loses_nothing(
    namespaces: Namespaces, procs: list[Proc], tmp_path: Path
) -> None:
    """Runner B (namespace B) holds a lease when its link goes down: the lease expires at the
    leader (namespace A), a runner in A does the task, the project completes. When the link comes
    back, B's result made under the old lease is refused (late_results_refused >= 1), B is back at
    work for a second project, and the first tree has every task exactly once."""
    ns = namespaces
    done_state = 2  # PROJECT_STATE_DONE
    # --insecure: a non-loopback address with no token, inside namespaces no one else can reach.
    leader = Proc(ns.exec(ns.a, PY, "-m", "paradecom.leader.main", "--listen", f"{LEADER_IP}:0", "--insecure",
                          "--db", str(tmp_path / "leader.db"), "--lease-timeout", "2", "--max-attempts", "10",
                          "--log-format", "json"))  # fmt: skip
    procs.append(leader)
    address = leader.address()
    assert address.startswith(LEADER_IP)
    watcher = Proc(ns.exec(ns.a, PY, "-c", WATCHER, address, "280"))
    procs.append(watcher)
    llm_b = Proc(ns.exec(ns.b, PY, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", "--latency", "1"))
    procs.append(llm_b)
    runner_b = Proc(
        ns.exec(ns.b, PY, "-m", "paradecom.runner.main", "--leader", address, "--concurrency", "1",
                "--no-cache", "--log-format", "json"),
        env={"OPENAI_BASE_URL": f"http://{llm_b.address()}/v1", "OPENAI_API_KEY": "netns-key"},
    )  # fmt: skip
    procs.append(runner_b)
    wait_for(lambda: f"ipv4:{RUNNER_IP}:" in leader.stderr, what="runner B to connect from 192.0.2.2")

    first = tmp_path / "first.json"
    first.write_text(json.dumps({"name": "Across hosts", "description": "Decompose me.", "max_depth": 1}))
    p1 = _submit(ns, address, first)
    wait_for(lambda: '"task received"' in runner_b.stderr, what="runner B to receive the root task")

    assert _ip("-n", ns.b, "link", "set", ns.veth_b, "down").returncode == 0  # cut B off mid-lease
    llm_a = Proc(ns.exec(ns.a, PY, "-m", "paradecom.devtools.fakellm", "--listen", "127.0.0.1:0", "--latency", "0.05"))
    procs.append(llm_a)
    runner_a = Proc(
        ns.exec(ns.a, PY, "-m", "paradecom.runner.main", "--leader", address, "--concurrency", "1",
                "--no-cache", "--log-format", "json"),
        env={"OPENAI_BASE_URL": f"http://{llm_a.address()}/v1", "OPENAI_API_KEY": "netns-key"},
    )  # fmt: skip
    procs.append(runner_a)
    wait_for(lambda: _latest(watcher, p1).get("state") == done_state, timeout=90, what="project 1 done without B")
    assert _latest(watcher, p1)["leases_expired"] >= 1, "B's lease expired and the task was reassigned"
    assert '"result submitted"' in runner_a.stderr

    assert _ip("-n", ns.b, "link", "set", ns.veth_b, "up").returncode == 0  # B is back
    wait_for(lambda: _latest(watcher, p1).get("late_results_refused", 0) >= 1, timeout=90,
             what="B's late result to be refused")  # fmt: skip
    assert '"SubmitResult refused, dropped"' in runner_b.stderr

    # Only B is left: a second project completes only if B is connected and working again.
    runner_a.signal(signal.SIGTERM)
    assert runner_a.wait(60) == 0
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"name": "After the cut", "description": "Decompose me too.", "max_depth": 1}))
    p2 = _submit(ns, address, second)
    wait_for(lambda: _latest(watcher, p2).get("state") == done_state, timeout=120, what="project 2 done by B")
    assert p2 in runner_b.stderr

    result = _cli(ns, "result", "--leader", address, p1, "--format", "json")
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    root = tree["tasks"][0]
    assert root["status"] == "done" and root["attempts"] >= 2
    assert [c["id"] for c in root["children"]] == ["1.1", "1.2", "1.3"], "children added exactly once"
    assert all(c["status"] == "done" and c["children"] == [] for c in root["children"])
