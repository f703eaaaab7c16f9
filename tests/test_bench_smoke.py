"""The benchmark harness (bench/) runs end to end on its smallest workloads, so it cannot rot: real
leader, runner and fake-llm processes, the JSON it writes, and the table it prints. No figure is
checked against a target here: timing on a shared machine is the benchmark's business, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_bench_smoke_runs_end_to_end_and_writes_the_expected_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    markdown = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out), "--markdown", str(markdown)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) >= {"meta", "leader", "efficiency", "targets", "errors"}
    assert results["errors"] == {}

    meta = results["meta"]
    assert meta["repeat"] == 1 and meta["sizes"]["name"] == "smoke"
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["python"]

    (leader,) = results["leader"]["rows"]
    assert leader["runners"] == 1 and leader["tasks"] == meta["sizes"]["leader_k"]
    for key in ("wall_s", "tasks_per_s", "leader_cpu_us_per_task", "runner_cpu_us_per_task", "other_cores"):
        assert leader[key] >= 0, key
    assert leader["tasks_per_s"] > 0 and leader["leader_cpu_us_per_task"] > 0
    assert len(leader["runs"]) == 1
    # Every task was leased and accepted once, so a ratio is at least 1; above 1 when batched.
    assert leader["assignments_per_message"] >= 1 and leader["results_per_transaction"] >= 1

    (eff,) = results["efficiency"]["rows"]
    assert eff["slots"] == 8 and eff["tasks"] == 8 * meta["sizes"]["eff_rounds"]
    assert 0 < eff["efficiency"] <= 1.05 and eff["ideal_s"] > 0

    figures = {t["figure"]: t for t in results["targets"]}
    cpu = next(t for name, t in figures.items() if name.startswith("leader CPU per task"))
    assert cpu["target"] == 150 and cpu["op"] == "<=" and isinstance(cpu["met"], bool)
    assert any(name.startswith("efficiency at 8 slots") for name in figures)
    assert "leader CPU per task" in done.stdout and "| figure |" in markdown.read_text()
