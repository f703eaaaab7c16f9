"""The Node.js runner (clients/node-runner/), written from proto/ alone, against a real leader and fake-llm.

It needs Node.js and `npm ci --prefix clients/node-runner`; without them these tests fail (never skip), so a
missing install cannot pass for a working runner.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from helpers import Proc, run_cli

NODE_RUNNER_DIR = ROOT / "clients" / "node-runner"
RUNNER_JS = NODE_RUNNER_DIR / "runner.js"
PARADECOM = [sys.executable, "-m", "paradecom.cli"]


def node_command() -> list[str]:
    """`node runner.js`, or a test failure that says what to install."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20 or later to test clients/node-runner")
    if not (NODE_RUNNER_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node-runner/node_modules is missing: run `npm ci --prefix clients/node-runner`")
    return [node, str(RUNNER_JS)]


def walk(tasks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every task of a `paradecom result --format json` tree, parents before their children."""
    for task in tasks:
        yield task
        yield from walk(task.get("children") or [])


def test_node_runner_alone_decomposes_a_project_and_exits_0_on_sigterm(
    fake_llm: Callable[..., str], start_leader: Callable[..., tuple[Proc, str]], procs: list[Proc], tmp_path: Path
) -> None:
    """With the Node.js runner as the only runner, a max_depth 2 project comes back complete: 1 + 3 + 9 tasks,
    hierarchical ids, each task once and done; SIGTERM then stops the runner with exit code 0."""
    command = node_command()
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5")
    _, leader = start_leader()
    runner = Proc([*command, "--leader", leader, "--concurrency", "4"],
                  env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key"})  # fmt: skip
    procs.append(runner)

    project = tmp_path / "project.json"
    project.write_text(json.dumps({
        "name": "Bakery webshop",
        "description": "Customers order bread online and collect it in a branch; staff mark orders ready.",
        "goals": ["Order in under three minutes"],
        "max_depth": 2,
    }))  # fmt: skip
    submitted = run_cli([*PARADECOM, "submit", "--leader", leader, str(project)])
    assert submitted.returncode == 0, f"paradecom submit failed:\n{submitted.stderr}"
    project_id = submitted.stdout.strip()
    assert project_id, f"paradecom submit printed no project id:\n{submitted.stderr}"

    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait", "--format", "json"], timeout=90)
    assert result.returncode == 0, f"paradecom result failed:\n{result.stderr}\nnode runner log:\n{runner.stderr}"
    tree = json.loads(result.stdout)

    assert tree["project"]["state"] == "done", tree["project"]
    tasks = list(walk(tree["tasks"]))
    ids = [t["id"] for t in tasks]
    expected = ["1"] + [f"1.{i}" for i in range(1, 4)] + [f"1.{i}.{j}" for i in range(1, 4) for j in range(1, 4)]
    assert len(ids) == len(set(ids)) == 13, ids
    assert sorted(ids) == sorted(expected)
    assert {t["status"] for t in tasks} == {"done"}, [(t["id"], t["status"], t["last_error"]) for t in tasks]
    # Each decomposed task was leased once (no retries, no expiries); the depth-2 leaves never needed a lease.
    assert [t["attempts"] for t in tasks] == [1 if t["depth"] < 2 else 0 for t in tasks], [
        (t["id"], t["attempts"]) for t in tasks
    ]
    assert tree["project"]["counts"]["total"] == 13
    assert tree["project"]["late_results_refused"] == 0
    for task in tasks:
        if task["depth"] < 2:
            assert len(task["children"]) == 3, task["id"]
    # The runner submitted what the LLM wrote: the children carry its titles and criteria.
    assert all(t["title"] and t["acceptance_criteria"] for t in tasks if t["depth"] > 0)
    assert "task failed" not in runner.stderr, runner.stderr

    runner.signal(signal.SIGTERM)
    assert runner.wait(timeout=20) == 0, f"node runner did not exit 0 on SIGTERM:\n{runner.stderr}"
    assert "stopped" in runner.stderr


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--leader", "nowhere"],
        ["--leader", "127.0.0.1:1", "--concurrency", "0"],
        ["--leader", "127.0.0.1:1", "--bogus"],
    ],
)
def test_node_runner_bad_flags_exit_2_with_one_line(flags: list[str]) -> None:
    """A missing or malformed flag is refused before any connection: one line on stderr, exit code 2."""
    done = run_cli([*node_command(), *flags], timeout=30)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("node-runner: error: "), done.stderr
