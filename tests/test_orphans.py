"""A `paradecom run --runner-processes` killed outright (SIGKILL: no cleanup of its own) leaves no
process behind: its runner processes are killed by the kernel when it dies (paradecom/client/with_parent.py).
(By default the leader and runners live in the run's own process, so there is nothing to leave.)"""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Proc, wait_for


def stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux only")
@pytest.mark.slow
def test_children_of_a_killed_run_stop(fake_llm: Callable[..., str], tmp_path: Path) -> None:
    """SIGKILL on `paradecom run --runner-processes`: both runner processes exit too."""
    base_url = fake_llm("--latency", "30")
    project = tmp_path / "p.yaml"
    project.write_text("name: Slow\ndescription: Answers take long.\nmax_depth: 1\n")
    run = Proc(
        [
            sys.executable,
            "-m",
            "paradecom.client.cli",
            "run",
            str(project),
            "--runners",
            "2",
            "--runner-processes",
            "--no-cache",
        ],
        env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"},
    )
    try:
        # fake-llm has a request: the runners are up, a task is in hand.
        wait_for(lambda: stats(base_url)["requests"] >= 1, 60, what="an LLM request")
        children = children_of(run.popen.pid)
        assert len(children) == 2, children  # two runners
        run.signal(signal.SIGKILL)
        run.wait()
        wait_for(lambda: not any(alive(pid) for pid in children), 30, what=f"{children} to exit")
    finally:
        run.stop()
