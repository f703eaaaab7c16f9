"""Child processes of the benchmark and what /proc says about them (CPU time, memory, the machine).

No third-party dependency here: CPU and RSS come from /proc/PID/stat and /proc/PID/status, so the
smoke test runs with the `dev` extra alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from paradecom.devtools import testing

T = TypeVar("T")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A workload could not be run or its result is wrong; the message says which and why."""


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; BenchError after `timeout` seconds."""
    return testing.wait_for(condition, timeout, interval, what, error=BenchError)


class Service(testing.Proc):
    """A child process whose output lines are kept (the last `keep` of each stream), with the time
    each line arrived. Services print `listening HOST:PORT` on stdout once they serve."""

    error = BenchError
    # Services under load start slower than in the tests, and a leader flushing its store stops slower.
    listen_timeout = 60.0
    stop_timeout = 20.0

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        keep: int = 5_000,
    ) -> None:
        super().__init__(args, env, cwd, name=name, keep=keep)

    def check_alive(self) -> None:
        # A benchmark report is one line per failure: the tail of stderr, not all of it.
        if not self.alive():
            raise BenchError(f"{self.name} exited with status {self.popen.returncode}: {self.tail()}")


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
