"""`python -m bench.local` (issue #11's local-run targets) runs end to end at its smoke sizes, so it
cannot rot: real `paradecom run` commands against a real fake-llm, Taskmaster when it is installed,
the JSON it writes and the table it prints. No figure is checked against a target here: timing on a
shared machine is the benchmark's business, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    """One smoke run for the module's tests: (the JSON, stdout, the Markdown table)."""
    tmp = tmp_path_factory.mktemp("bench-local")
    out, markdown = tmp / "results-local.json", tmp / "table.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.local", "--smoke", "--out", str(out), "--markdown", str(markdown)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout, Path(markdown).read_text()


@pytest.mark.slow
def test_bench_local_smoke_measures_the_paradecom_rows(smoke: tuple[dict[str, Any], str, str]) -> None:
    """Rows 1, 2 and 4 come out of one run: each configuration ran, its tree was checked (the harness
    fails otherwise), fake-llm saw the expected calls and told when the first one arrived, and every
    figure carries its baseline from the same run; the table names the stand-in for auto."""
    results, stdout, markdown = smoke
    assert results["errors"] == {}
    meta = results["meta"]
    assert meta["sizes"]["name"] == "smoke" and meta["sizes"]["repeat"] == 1
    assert meta["loadavg_before"] and meta["loadavg_after"]
    assert meta["auto_args"] == (["--runners", "auto"] if meta["auto_available"] else ["--runners", "2"])

    one, shop = results["groups"]["one-call"], results["groups"]["webshop"]
    assert (one["calls"], shop["calls"]) == (1, 4)
    for group in (one, shop):
        assert set(group["configs"]) == {"auto", "--runners 0"}
        for config in group["configs"].values():
            assert config["llm_ok"] == group["calls"] and config["problems"] == []
            assert config["wall_s"] > 0 and 0 < config["first_request_s"] < config["wall_s"]
            assert len(config["runs"]) == 1

    figures = [r["figure"] for r in results["rows"]]
    assert figures[:3] == [
        "auto wall / --runners 0 wall, 1-call project",
        "same, 4-call webshop",
        "first LLM request after the command starts (webshop)",
    ]
    for row in results["rows"][:3]:
        assert row["value"] > 0 and row["baseline"].startswith("--runners 0: ") and isinstance(row["met"], bool)
    assert "auto = " in stdout and "indicative only" in stdout
    assert "| figure |" in markdown


@pytest.mark.slow
def test_bench_local_smoke_runs_taskmaster_against_fake_llm(smoke: tuple[dict[str, Any], str, str]) -> None:
    """Row 7 at smoke size (2 tasks x 2 subtasks): Taskmaster's parse-prd and expand --all ran on
    fake-llm with no connection beyond loopback, made the tree asked for, and both sides made the
    same number of LLM calls. Skipped, saying why, when Taskmaster is not installed."""
    results, stdout, _ = smoke
    if "7" in results["skipped"]:
        assert "SKIPPED: Taskmaster comparison skipped" in stdout
        pytest.skip(results["skipped"]["7"])
    group = results["groups"]["taskmaster-2x2"]
    tm, pd = group["configs"]["taskmaster"], group["configs"]["auto"]
    assert tm["problems"] == [] and pd["problems"] == []
    assert tm["llm_ok"] == pd["llm_ok"] == group["calls"] == 3
    (run,) = tm["runs"]
    assert run["extra"]["subtasks"] == [2, 2] and run["extra"]["blocked_connections"] == 0
    assert run["extra"]["schema_answers"] == 3
    row = next(r for r in results["rows"] if r["figure"].startswith("Taskmaster"))
    assert row["value"] > 0 and "Taskmaster 3, ParaDecom 3" in row["note"]
