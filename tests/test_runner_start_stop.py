"""A runner stopped while it is still starting (importing grpc and openai, parsing its flags, before
its event loop's signal handlers exist) exits 0 like a runner stopped at work, not -15.

The runner's `main` makes SIGTERM harmless before its heavy imports; these tests stop it inside
that window, through both entry points (`python -m paradecom.runner.main` and the `paradecom-runner`
console script).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from functools import partial
from pathlib import Path

import pytest
from helpers import BIN, Proc, wait_for

ENTRY_POINTS = {
    "module": [sys.executable, "-m", "paradecom.runner.main"],
    "console-script": [str(BIN / "paradecom-runner")],
}

# Put first on the runner's PYTHONPATH: stops the process at the first import of
# $BLOCK_IMPORT, says so on stderr, and goes on once something opens the FIFO $BLOCK_FIFO for writing.
# A signal arriving meanwhile interrupts the wait like it would interrupt the real import.
SITECUSTOMIZE = """
import importlib.abc, os, sys

class _Gate(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["BLOCK_IMPORT"]:
            sys.meta_path.remove(self)
            print(f"blocked importing {name}", file=sys.stderr, flush=True)
            with open(os.environ["BLOCK_FIFO"]) as gate:
                gate.read()
        return None

if os.environ.get("BLOCK_IMPORT"):
    sys.meta_path.insert(0, _Gate())
"""


def _unused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _runner(entry: str, env: dict[str, str] | None = None) -> Proc:
    # No leader listens there: a runner that missed the stop would retry it for ever, not exit.
    args = [*ENTRY_POINTS[entry], "--leader", _unused_address(), "--log-format", "json", "--no-cache"]
    base = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "test-key"}
    return Proc(args, env={**base, **(env or {})})


def _open_gate(fifo: Path) -> bool:
    """Let the blocked import go on; False while no reader has the FIFO open (it is between two
    attempts, after a signal interrupted one)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


@pytest.mark.parametrize("module", ["grpc", "openai"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.slow
def test_sigterm_during_the_imports_exits_0(entry: str, module: str, tmp_path: Path) -> None:
    """SIGTERM while the runner is held inside its import of grpc (the first heavy one) or openai
    (a later one): once the import goes on, the runner stops at once and exits 0 (before the fix
    the signal killed it: -15)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    proc = _runner(entry, {"PYTHONPATH": str(hooks), "BLOCK_IMPORT": module, "BLOCK_FIFO": str(fifo)})
    try:
        wait_for(lambda: f"blocked importing {module}" in proc.stderr, what=f"the runner to import {module}")
        proc.signal(signal.SIGTERM)
        wait_for(lambda: _open_gate(fifo) or proc.popen.poll() is not None, what="the gate to open")
        assert proc.wait(30) == 0, proc.stderr
        assert '"stop requested"' in proc.stderr and '"runner stopped"' in proc.stderr
    finally:
        proc.stop()


def _catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM (the SigCgt mask of /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def _gone_or_catching_sigterm(proc: Proc) -> bool:
    return proc.popen.poll() is not None or _catches_sigterm(proc.popen.pid)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) to see signal handlers")
@pytest.mark.slow
def test_sigterm_as_soon_as_it_can_be_caught_exits_0() -> None:
    """Started and sent SIGTERM the moment it has a handler for it (well before it is ready:
    the handler comes before the imports), three times in a row: exit 0 each time. (The console
    script goes through the same `main`; the test above runs both.)"""
    for _ in range(3):
        proc = _runner("module")
        try:
            wait_for(partial(_gone_or_catching_sigterm, proc), interval=0.001, what="the runner to catch SIGTERM")
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.stderr
            assert '"runner stopped"' in proc.stderr
        finally:
            proc.stop()
