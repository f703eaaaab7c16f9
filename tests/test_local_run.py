"""`paradecom run` on one machine (issue #11): runners in the command's own process, `--runners
auto` following the work, one decomposition request whatever the mode, the endpoint checked before
anything starts, a typed end for a partial tree, and a stop that prints what was finished."""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, run_cli, wait_for
from test_orphans import children_of

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]


def get(base_url: str, path: str) -> Any:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + path, timeout=5) as response:
        return json.loads(response.read())


def project_file(tmp_path: Path, max_depth: int = 2, **extra: object) -> Path:
    path = tmp_path / "project.json"
    path.write_text(
        json.dumps(
            {"name": "Recipe site", "description": "Post, rate and shop recipes.", "max_depth": max_depth, **extra}
        )
    )
    return path


def run(path: Path, base_url: str, *flags: str, env: dict[str, str] | None = None) -> Any:
    """`paradecom run PATH FLAGS` against `base_url`: (exit code, parsed stdout or None, stderr)."""
    result = run_cli(
        [*PARADECOM, "run", str(path), "--no-cache", *flags],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k", **(env or {})},
    )
    try:
        tree = json.loads(result.stdout)
    except ValueError:
        tree = None
    return result.returncode, tree, result.stderr


def all_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for task in tasks:
        out.append(task)
        out.extend(all_tasks(task["children"]))
    return out


@pytest.mark.slow
def test_auto_runs_in_process_and_follows_the_frontier(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """The default (`--runners auto`) starts no process: the leader and runner live in the command.
    Its concurrency follows the tasks ready: 1 at the root, 4 on level 1, 16 on level 2, reported
    in the result's `run` section."""
    base_url = fake_llm("--fanout", "4", "--atomic-depth", "3", "--latency", "1")
    path = project_file(tmp_path, max_depth=3)
    proc = Proc([*PARADECOM, "run", str(path), "--no-cache"], env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"})
    try:
        wait_for(lambda: get(base_url, "/stats")["requests"] >= 1, 60, what="the first LLM request")
        assert children_of(proc.pid) == set(), "no leader or runner process"
        assert proc.wait(120) == 0, proc.stderr
    finally:
        proc.stop()
    tree = json.loads(proc.stdout)
    assert len(all_tasks(tree["tasks"])) == 1 + 4 + 16 + 64
    stats = get(base_url, "/stats")
    assert stats["requests"] == 21 and stats["max_in_flight"] == 16
    report = tree["project"]["run"]
    assert report["runners"] == "auto" and report["mode"] == "in-process"
    assert report["peak_concurrency"] == 16
    # Most of the time is spent on levels narrower than the widest: the mean is well below the peak.
    assert 1 < report["mean_concurrency"] < 16


@pytest.mark.slow
def test_auto_keeps_to_the_concurrency_cap(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """`--runners auto --concurrency 2` never has more than 2 calls at the endpoint at once."""
    base_url = fake_llm("--fanout", "5", "--atomic-depth", "2", "--latency", "0.3")
    code, tree, stderr = run(project_file(tmp_path), base_url, "--concurrency", "2")
    assert code == 0, stderr
    assert get(base_url, "/stats")["max_in_flight"] == 2
    assert tree["project"]["run"]["peak_concurrency"] == 2


@pytest.mark.parametrize("flags", [["--runners", "3"], ["--runners", "2", "--runner-processes"], ["--runners", "0"]])
@pytest.mark.slow
def test_every_mode_gives_the_same_tree(fake_llm: Callable[..., str], tmp_path: Path, flags: list[str]) -> None:
    """Fixed runners in process, runner processes and the sequential fallback decompose the same project
    to the same tree as auto."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "0.05")
    path = project_file(tmp_path)
    code, auto, stderr = run(path, base_url)
    assert code == 0, stderr
    code, other, stderr = run(path, base_url, *flags)
    assert code == 0, stderr

    def shape(tree: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(t["id"], t["title"], tuple(t["depends_on"]), t["status"]) for t in all_tasks(tree["tasks"])]

    assert len(shape(auto)) == 13 and shape(other) == shape(auto)
    mode = {"0": "sequential"}.get(flags[1], "processes" if "--runner-processes" in flags else "in-process")
    assert other["project"]["run"]["mode"] == mode


@pytest.mark.slow
def test_sequential_and_parallel_send_the_same_requests(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """For each task both modes send the same request (messages, schema, fan-out bounds, tokens): the
    requests recorded at fake-llm are the same set. With PARADECOM_MAX_SUBTASKS=10 both accept the 9
    children fake-llm gives (the sequential mode once validated against 7 and re-asked)."""
    base_url = fake_llm("--fanout", "9", "--atomic-depth", "2", "--latency", "0.05")
    path = project_file(tmp_path)
    recorded = {}
    for runners in ("0", "auto"):
        urllib.request.urlopen(urllib.request.Request(base_url.removesuffix("/v1") + "/stats/reset", method="POST"))
        code, tree, stderr = run(path, base_url, "--runners", runners, env={"PARADECOM_MAX_SUBTASKS": "10"})
        assert code == 0, stderr
        assert len(tree["tasks"][0]["children"]) == 9 and tree["project"]["usage"]["reasks"] == 0
        recorded[runners] = sorted(json.dumps(body, sort_keys=True) for body in get(base_url, "/requests"))
    assert len(recorded["0"]) == 10
    assert recorded["0"] == recorded["auto"]
    body = json.loads(recorded["0"][0])
    assert body["response_format"]["json_schema"]["schema"]["properties"]["subtasks"]["maxItems"] == 10


@pytest.mark.slow
def test_cache_written_by_one_mode_serves_the_other(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """A sequential run fills the decomposition cache; the same project in auto mode then makes no call."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "2")
    path = project_file(tmp_path)
    env = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"}
    first = run_cli([*PARADECOM, "run", str(path), "--runners", "0"], env=env)
    assert first.returncode == 0, first.stderr
    before = get(base_url, "/stats")["requests"]
    second = run_cli([*PARADECOM, "run", str(path)], env=env)
    assert second.returncode == 0, second.stderr
    assert get(base_url, "/stats")["requests"] == before
    assert json.loads(second.stdout)["project"]["usage"]["cache_hits"] == 4


@pytest.mark.parametrize(
    ("fake_flags", "env", "reason"),
    [
        ([], {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, "cannot reach the LLM endpoint http://127.0.0.1:9/v1"),
        (["--api-key", "right"], {"OPENAI_API_KEY": "wrong"}, "refused the API key (HTTP 401"),
        (["--models", "gpt-4o,o3"], {"PARADECOM_MODEL": "no-such-model"}, "does not serve the model 'no-such-model'"),
    ],
    ids=["nothing-listening", "refused-key", "unknown-model"],
)
@pytest.mark.slow
def test_an_endpoint_that_cannot_work_is_one_line_exit_1(
    fake_llm: Callable[..., str], tmp_path: Path, fake_flags: list[str], env: dict[str, str], reason: str
) -> None:
    """Nothing listening, a refused key, an unknown model: one line naming the endpoint and the reason,
    exit 1, and not a single decomposition answered (the root's early request, sent while the
    endpoint is checked, is refused like the check)."""
    base_url = fake_llm(*fake_flags)
    result = run_cli(
        [*PARADECOM, "run", str(project_file(tmp_path))],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "right", **env},
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paradecom: error: ") and reason in lines[0], result.stderr
    assert result.stdout == ""
    assert get(base_url, "/stats")["ok"] == 0


@pytest.mark.slow
def test_dead_top_level_task_is_an_error_unless_partial_is_allowed(
    fake_llm: Callable[..., str], tmp_path: Path
) -> None:
    """Every answer malformed: the root dies. `paradecom run` prints the tree, says why on stderr and
    exits 1; with --allow-partial it exits 0."""
    base_url = fake_llm("--malformed-rate", "1")
    path = project_file(tmp_path)
    code, tree, stderr = run(path, base_url, "--max-attempts", "1")
    assert code == 1
    assert tree["tasks"][0]["status"] == "dead"
    assert "1 task(s) dead" in stderr and "--allow-partial" in stderr
    code, tree, stderr = run(path, base_url, "--max-attempts", "1", "--allow-partial")
    assert code == 0, stderr
    assert tree["tasks"][0]["status"] == "dead"


@pytest.mark.slow
def test_ctrl_c_stops_at_once_and_prints_what_is_finished(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """SIGINT while level 1 waits on a slow LLM: the command stops without waiting for the answers
    (30 s), prints the tree as far as it got (the root decomposed) and exits 130."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "30")
    path = project_file(tmp_path)
    proc = Proc([*PARADECOM, "run", str(path), "--no-cache"], env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"})
    try:
        wait_for(lambda: get(base_url, "/stats")["in_flight"] >= 1, 60, what="a call in flight")
        # The root's call goes out before the leader is up (the head start): wait for the project too.
        wait_for(lambda: '"project_id"' in proc.stderr, 60, what="the project's first progress line")
        proc.signal(signal.SIGINT)
        # Well under the 30 s an answer takes; bench/ measures how fast (docs/performance.md).
        assert proc.wait(10) == 130
    finally:
        proc.stop()
    tree = json.loads(proc.stdout)
    assert tree["tasks"][0]["status"] in ("leased", "queued") and tree["project"]["state"] == "running"
    assert "stopped" in proc.stderr


@pytest.mark.slow
def test_bad_run_flags_are_one_line(tmp_path: Path) -> None:
    """Flags that make no sense together are one line, exit 2, before anything starts."""
    path = project_file(tmp_path)
    for flags, expected in [
        (["--runners", "many"], "'many' is not a whole number (nor auto)"),
        (["--runners", "65"], "auto, or a whole number from 0 to 64"),
        (["--leader", "127.0.0.1:1", "--runners", "2"], "--runners apply to a run on this machine"),
        (["--runners", "0", "--runner-processes"], "--runner-processes needs runners"),
        (["--auth-token-file", "x"], "use them with --leader"),
    ]:
        result = run_cli([*PARADECOM, "run", str(path), *flags], env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
        assert result.returncode == 2, (flags, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, (flags, result.stderr)


@pytest.mark.slow
def test_ctrl_c_stops_eval_and_prints_the_finished_instances(fake_llm: Callable[..., str]) -> None:
    """SIGINT during `paradecom eval` (an answer takes 30 s): it stops at once, prints the table of
    what was scored (nothing yet) and exits 130."""
    base_url = fake_llm("--latency", "30")
    proc = Proc(
        [*PARADECOM, "eval", "data/devai", "--limit", "2", "--max-depth", "1"],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"},
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        wait_for(lambda: get(base_url, "/stats")["in_flight"] >= 1, 60, what="a call in flight")
        proc.signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        proc.stop()
    assert "mean of 0 scored" in proc.stdout
