"""Child processes of the benchmark and what /proc says about them (CPU time, memory, the machine).

No third-party dependency here: CPU and RSS come from /proc/PID/stat and /proc/PID/status, so the
smoke test runs with the `dev` extra alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A workload could not be run or its result is wrong; the message says which and why."""


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Service:
    """A child process whose output lines are kept (the last `keep` of each stream), with the time
    each line arrived. Services print `listening HOST:PORT` on stdout once they serve."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        keep: int = 5_000,
    ) -> None:
        self.name = name
        self.args = list(args)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.stdout_lines: deque[tuple[float, str]] = deque(maxlen=keep)
        self.stderr_lines: deque[tuple[float, str]] = deque(maxlen=keep)
        self.matches: dict[str, int] = {}
        self._watch: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr_lines), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def count(self, needle: str) -> None:
        """Count lines (from now on) that contain `needle`; read with `matches[needle]`."""
        with self._lock:
            self._watch.append(needle)
            self.matches.setdefault(needle, 0)

    def _pump(self, stream: Any, sink: deque[tuple[float, str]]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                for needle in self._watch:
                    if needle in line:
                        self.matches[needle] += 1
            sink.append((time.time(), line))

    def tail(self, lines: int = 8) -> str:
        out = [line for _, line in list(self.stderr_lines)[-lines:]]
        return " | ".join(out) or "(no output)"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with status {self.popen.returncode}: {self.tail()}")

    def address(self, timeout: float = 60.0) -> str:
        """HOST:PORT from the `listening HOST:PORT` line."""

        def find() -> str | None:
            for _, line in list(self.stdout_lines):
                if line.startswith("listening "):
                    return line.split()[1]
            self.check_alive()
            return None

        return wait_for(find, timeout, f"{self.name} to listen")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it lingers; always leaves no process behind."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        for t in self._threads:
            t.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# --- /proc --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name is in parentheses and may hold spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user; steal is time the hypervisor took, not ours to use.
    total = sum(fields[:8])
    return (total - idle) / CLOCK_TICKS


def self_cpu_seconds() -> float:
    return time.process_time()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = 0
    try:
        with open("/proc/meminfo") as f:
            match = re.search(r"MemTotal:\s+(\d+)", f.read())
            mem_total = int(match.group(1)) * 1024 if match else 0
    except OSError:
        pass
    try:
        import sqlite3

        sqlite_version = sqlite3.sqlite_version
    except ImportError:  # pragma: no cover
        sqlite_version = ""
    try:
        import grpc

        grpc_version = grpc.__version__
    except ImportError:  # pragma: no cover
        grpc_version = ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": mem_total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite_version,
        "grpcio": grpc_version,
        "loadavg": list(os.getloadavg()),
    }


class Interference:
    """How busy the machine was with other work while a measurement ran: busy cores overall, minus
    the CPU our own processes used, per second of wall time."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self._pids = pids
        self._t0 = time.monotonic()
        self._busy0 = system_busy_seconds()
        self._ours0 = self._ours()

    def _ours(self) -> float:
        total = self_cpu_seconds()
        for pid in self._pids():
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def result(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy = system_busy_seconds() - self._busy0
        ours = self._ours() - self._ours0
        return {
            "busy_cores": round(busy / wall, 2),
            "our_cores": round(ours / wall, 2),
            "other_cores": round(max(0.0, busy - ours) / wall, 2),
        }
