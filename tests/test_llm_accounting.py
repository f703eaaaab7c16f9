"""Issue #3 end to end: the decomposition cache, usage accounting, stop rules and budgets, with
real leader and runner processes and fake-llm counting the calls it gets."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Proc, run_cli

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def stats(base_url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def all_tasks(tasks: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    return [t for top in tasks for t in [top, *all_tasks(top["children"])]]


@pytest.fixture
def project_file(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("name: Chat app\ndescription: Rooms, messages and search.\nmax_depth: 2\n")
    return path


def run(project: Path, base_url: str, *flags: str) -> dict:  # type: ignore[type-arg]
    env = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"}
    result = run_cli([*PARADECOM, "run", str(project), "--runners", "1", *flags], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_rerun_is_answered_from_the_cache(fake_llm: Callable[..., str], project_file: Path) -> None:
    """The same project run again makes no LLM call (counted at fake-llm); --no-cache asks again;
    the result's usage says where each answer came from."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5")
    first = run(project_file, base_url)
    assert stats(base_url)["requests"] == 4
    assert first["project"]["usage"]["calls"] == 4 and first["project"]["usage"]["cache_hits"] == 0
    assert first["project"]["usage"]["prompt_tokens"] > 0 and first["project"]["usage"]["completion_tokens"] > 0

    second = run(project_file, base_url)
    assert stats(base_url)["requests"] == 4, "the second run asked the LLM"
    assert second["project"]["usage"]["calls"] == 0 and second["project"]["usage"]["cache_hits"] == 4
    assert [t["title"] for t in all_tasks(second["tasks"])] == [t["title"] for t in all_tasks(first["tasks"])]

    run(project_file, base_url, "--no-cache")
    assert stats(base_url)["requests"] == 8


@pytest.mark.slow
def test_cache_is_per_endpoint(fake_llm: Callable[..., str], project_file: Path) -> None:
    """Two endpoints serving one model name never share answers; a server that moved (same
    PARADECOM_ENDPOINT_ID, the embedded model on a new free port) still hits the cache."""
    first_url = fake_llm("--fanout", "3", "--atomic-depth", "5")
    second_url = fake_llm("--fanout", "3", "--atomic-depth", "5")
    run(project_file, first_url)
    run(project_file, second_url)
    assert stats(first_url)["requests"] == 4
    assert stats(second_url)["requests"] == 4, "the second endpoint was answered from the first's cache"

    env = {"OPENAI_API_KEY": "k", "PARADECOM_ENDPOINT_ID": "the-same-model"}
    for url in (first_url, second_url):
        result = run_cli([*PARADECOM, "run", str(project_file), "--runners", "1"], env={**env, "OPENAI_BASE_URL": url})
        assert result.returncode == 0, result.stderr
    assert stats(first_url)["requests"] == 8
    assert stats(second_url)["requests"] == 4, "one endpoint id, yet the cache missed"


@pytest.mark.slow
def test_reasks_and_failures_are_counted_per_project(fake_llm: Callable[..., str], project_file: Path) -> None:
    """Malformed answers are re-asked; the re-asks show in the project's usage."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--malformed-rate", "0.4", "--seed", "3")
    tree = run(project_file, base_url, "--no-cache")
    usage = tree["project"]["usage"]
    assert stats(base_url)["malformed"] >= 1
    assert usage["reasks"] >= 1
    assert usage["calls"] == stats(base_url)["requests"]
    assert usage["reasks"] + usage["failures"] >= stats(base_url)["malformed"]


@pytest.mark.slow
def test_stop_reasons_are_recorded(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """Atomic children, max depth, fewer than the minimum fan-out, and the task budget each stop
    decomposition and say so on the task."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "2")
    _, leader = start_leader()
    start_runner(leader, base_url, "--concurrency", "4")
    path = tmp_path / "p.yaml"
    path.write_text("name: Blog\ndescription: Posts and comments.\nmax_depth: 3\n")
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    result = run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait"])
    tasks = all_tasks(json.loads(result.stdout)["tasks"])
    assert {t["stop_reason"] for t in tasks if t["depth"] == 2} == {"atomic"}
    assert all(t["stop_reason"] == "" for t in tasks if t["depth"] < 2)

    # A leader demanding 4 children from an LLM that gives 3: every task becomes a leaf.
    base_url3 = fake_llm("--fanout", "3", "--atomic-depth", "5")
    _, leader2 = start_leader("--min-subtasks", "4", db=tmp_path / "second.db")
    start_runner(leader2, base_url3)
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader2, str(path)]).stdout.strip()
    tree = json.loads(run_cli([*PARADECOM, "result", "--leader", leader2, project_id, "--wait"]).stdout)
    (root,) = tree["tasks"]
    assert root["children"] == [] and root["stop_reason"] == "fewer than 4 subtasks"
    # Asked again (twice, the default re-asks) before the stop rule took the answer.
    assert stats(base_url3)["requests"] == 3 and tree["project"]["usage"]["reasks"] == 2

    # A task budget of 4: the root's 3 children fill it, so they are not decomposed further.
    path.write_text("name: Blog\ndescription: Posts and comments.\nmax_depth: 3\nmax_tasks: 4\n")
    _, leader3 = start_leader(db=tmp_path / "third.db")
    start_runner(leader3, base_url3)
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader3, str(path)]).stdout.strip()
    tree = json.loads(run_cli([*PARADECOM, "result", "--leader", leader3, project_id, "--wait"]).stdout)
    children = tree["tasks"][0]["children"]
    assert len(all_tasks(tree["tasks"])) == 4 and all(c["stop_reason"] == "task budget reached" for c in children)


@pytest.mark.slow
def test_token_budget_stops_queued_tasks(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """Once a project has spent max_tokens, tasks still queued become leaves, and it finishes."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5")
    _, leader = start_leader()
    start_runner(leader, base_url, "--concurrency", "1")
    path = tmp_path / "p.yaml"
    path.write_text("name: Blog\ndescription: Posts and comments.\nmax_depth: 3\nmax_tokens: 1\n")
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()
    tree = json.loads(run_cli([*PARADECOM, "result", "--leader", leader, project_id, "--wait"]).stdout)
    children = tree["tasks"][0]["children"]
    assert stats(base_url)["requests"] == 1, "only the root was decomposed"
    assert [c["stop_reason"] for c in children] == ["token budget reached"] * 3
    assert tree["project"]["state"] == "done"


@pytest.mark.slow
def test_budget_can_be_read_and_changed_while_running(start_leader: Callable[..., tuple[Proc, str]]) -> None:
    """`paradecom budget` shows the leader's LLM budget and changes it without a restart."""
    _, leader = start_leader("--llm-rpm", "100")
    shown = run_cli([*PARADECOM, "budget", "--leader", leader])
    assert shown.returncode == 0 and "requests_per_minute=100 tokens_per_minute=0" in shown.stdout
    changed = run_cli([*PARADECOM, "budget", "--leader", leader, "--tpm", "50000"])
    assert "requests_per_minute=100 tokens_per_minute=50000" in changed.stdout
    bad = run_cli([*PARADECOM, "budget", "--leader", leader, "--rpm", "-3"])
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
