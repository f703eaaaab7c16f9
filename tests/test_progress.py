"""Progress you can see: JSON lines off a terminal (or with --json), a live rich display on one."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Proc, run_cli, wait_for
from rich.console import Console

from paradecom.client.progress import ProgressReporter
from paradecom.v1 import project_pb2

PARADECOM = [sys.executable, "-m", "paradecom.client.cli"]
RUNNING, DONE = project_pb2.PROJECT_STATE_RUNNING, project_pb2.PROJECT_STATE_DONE


def summary(
    done: int, leased: int, queued: int, *, state: int = RUNNING, tokens: int = 0
) -> project_pb2.ProjectSummary:
    return project_pb2.ProjectSummary(
        project_id="p1", name="Demo", state=state, done=done, leased=leased, queued=queued,  # type: ignore[arg-type]
        total=done + leased + queued, usage=project_pb2.LlmUsage(prompt_tokens=tokens, completion_tokens=tokens // 10),
    )  # fmt: skip


def test_json_lines_one_object_per_change_with_rate_and_eta() -> None:
    """Each change is one parseable JSON line; a repeated summary prints nothing; the rate is
    tasks finished per second since the first report and the ETA is what is left at that rate."""
    out = io.StringIO()
    now = [100.0]
    with ProgressReporter(out, clock=lambda: now[0]) as show:
        assert show.json_lines, "a StringIO is not a terminal"
        show(summary(0, 1, 0))
        show(summary(0, 1, 0))
        now[0] = 102.0
        show(summary(4, 2, 2, tokens=1000))
        now[0] = 104.0
        show(summary(13, 0, 0, state=DONE, tokens=3000))
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["done"] for r in rows] == [0, 4, 13], "one line per change, the repeat dropped"
    assert rows[0]["eta_s"] is None and rows[0]["rate_per_s"] == 0, "no rate before anything finished"
    assert rows[1]["rate_per_s"] == 2.0 and rows[1]["eta_s"] == 2.0  # 4 tasks in 2 s; 4 left
    assert rows[1]["tokens"] == 1100 and rows[1]["prompt_tokens"] == 1000 and rows[1]["completion_tokens"] == 100
    assert rows[2]["state"] == "done" and rows[2]["eta_s"] == 0.0 and rows[2]["elapsed_s"] == 4.0
    assert set(rows[0]) >= {
        "project_id",
        "state",
        "done",
        "leased",
        "peak_leased",
        "queued",
        "dead",
        "total",
        "tokens",
        "eta_s",
    }


def test_rich_display_renders_on_a_terminal() -> None:
    """On a (forced) terminal the live display draws the counts, rate, tokens and ETA, and ends
    with the final frame left on screen."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    now = [0.0]
    with ProgressReporter(out, console=console, clock=lambda: now[0]) as show:
        assert not show.json_lines
        show(summary(0, 1, 0))
        now[0] = 2.0
        show(summary(4, 2, 2, tokens=1000))
        now[0] = 4.0
        show(summary(13, 0, 0, state=DONE, tokens=3000))
    text = out.getvalue()
    assert "p1 done" in text and "13/13" in text
    assert "done 13 · at once 0 (peak 2) · queued 0 · dead 0" in text
    assert "3,300 tokens" in text and "ETA 0s" in text
    assert "at once 2 (peak 2) · queued 2" in text and "ETA 2s" in text, "the running frame was drawn too"


@pytest.mark.slow
def test_watch_prints_json_lines_off_a_terminal_and_rich_on_one(
    fake_llm: Callable[..., str],
    start_leader: Callable[..., tuple[Proc, str]],
    start_runner: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    """`paradecom watch` with stdout on a terminal (a pty) draws the live display from running to
    done, exit 0; with stdout a pipe it prints JSON lines ending in the done state; `--json`
    forces them on a terminal."""
    base_url = fake_llm("--fanout", "3", "--atomic-depth", "5", "--latency", "0.5")
    _, leader = start_leader("--max-depth", "2")
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "Watched", "description": "Watch me."}))
    project_id = run_cli([*PARADECOM, "submit", "--leader", leader, str(path)]).stdout.strip()

    live = PtyProc([*PARADECOM, "watch", "--leader", leader, project_id])
    try:
        # No runner yet: the display shows the project running with its root task queued.
        wait_for(lambda: "queued 1" in live.text(), what="the running frame")
        start_runner(leader, base_url, "--concurrency", "4")
        assert live.wait() == 0, live.text()
    finally:
        live.close()
    screen = live.text()
    assert f"{project_id} running" in screen and f"{project_id} done" in screen and "13/13" in screen
    assert "tokens" in screen and "ETA" in screen and '"state"' not in screen, "drawn, not JSON"

    piped = run_cli([*PARADECOM, "watch", "--leader", leader, project_id])
    assert piped.returncode == 0, piped.stderr
    rows = [json.loads(line) for line in piped.stdout.splitlines()]
    assert rows[-1]["state"] == "done" and rows[-1]["done"] == 13 and rows[-1]["total"] == 13
    assert rows[-1]["tokens"] > 0

    forced = PtyProc([*PARADECOM, "watch", "--json", "--leader", leader, project_id])
    try:
        assert forced.wait() == 0, forced.text()
    finally:
        forced.close()
    assert json.loads(forced.text().strip().splitlines()[-1])["state"] == "done"


class PtyProc:
    """A command with stdout and stderr on a pseudo-terminal, its output read in the background."""

    def __init__(self, args: list[str]) -> None:
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env={**os.environ, "COLUMNS": "200"}
        )
        os.close(slave)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every writer closed its side
                return
            if not data:
                return
            self._chunks.append(data)

    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        os.close(self._master)
