"""Child processes on loopback, and waiting on conditions instead of sleeping.

Shared by the tests (tests/helpers.py) and the benchmark (bench/procs.py), which start the same
services the same way; in the package so `python -m bench.run` finds it from a fresh clone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, ClassVar, TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
    *,
    error: type[Exception] = AssertionError,
) -> T:
    """Poll `condition` until it returns something truthy; `error` after `timeout` seconds
    (AssertionError fails a test; the benchmark passes its own)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(interval)


async def wait_for_async(
    condition: Callable[[], T | None],
    # Not asyncio.timeout around the caller: the error names what was awaited, as wait_for's does.
    timeout: float = 30.0,  # noqa: ASYNC109
    interval: float = 0.05,
    what: str = "",
    *,
    error: type[Exception] = AssertionError,
) -> T:
    """`wait_for` on a running event loop: between polls it yields to the loop, so the tasks that
    make `condition` true go on running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what or condition}")
        await asyncio.sleep(interval)


class Proc:
    """A child process whose stdout and stderr lines are collected in the background, with the
    time each arrived (the last `keep` of each stream; None keeps all).

    Services print one line `listening HOST:PORT` on stdout once they serve; `address` waits for it.
    A subclass sets what a failed wait raises and how long the waits take by default.
    """

    error: ClassVar[type[Exception]] = AssertionError
    listen_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 10.0

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        *,
        name: str | None = None,
        keep: int | None = None,
    ) -> None:
        self.args = list(args)
        self.name = name or self.args[0]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            text=True,
            # A child that prints invalid UTF-8 must not end the reader thread, or its pipe fills.
            errors="replace",
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.stdout_timed: deque[tuple[float, str]] = deque(maxlen=keep)
        self.stderr_timed: deque[tuple[float, str]] = deque(maxlen=keep)
        self.matches: dict[str, int] = {}
        self._watch: list[str] = []
        # The readers append while callers poll; copies are taken under the lock so a poll never
        # sees a deque mutated during iteration.
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout_timed), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr_timed), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: IO[str], sink: deque[tuple[float, str]]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with self._lock:
                for needle in self._watch:
                    if needle in line:
                        self.matches[needle] += 1
                sink.append((time.time(), line))

    def count(self, needle: str) -> None:
        """Count lines (from now on) that contain `needle`; read with `matches[needle]`."""
        with self._lock:
            self._watch.append(needle)
            self.matches.setdefault(needle, 0)

    def _lines(self, timed: deque[tuple[float, str]]) -> list[str]:
        with self._lock:
            return [line for _, line in timed]

    @property
    def stdout_lines(self) -> list[str]:
        return self._lines(self.stdout_timed)

    @property
    def stderr_lines(self) -> list[str]:
        return self._lines(self.stderr_timed)

    @property
    def stdout(self) -> str:
        return "\n".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def tail(self, lines: int = 8) -> str:
        """The last `lines` lines of stderr on one line, for an error message."""
        return " | ".join(self.stderr_lines[-lines:]) or "(no output)"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        """`error` naming the exit status and stderr if the process has exited."""
        if not self.alive():
            raise self.error(f"{self.args[0]} exited {self.popen.returncode}:\n{self.stderr}")

    def address(self, timeout: float | None = None) -> str:
        """HOST:PORT from the process's `listening HOST:PORT` line (stdout)."""
        return self._announced("listening", "stdout", f"{self.name} to listen", timeout)

    def metrics_address(self, timeout: float | None = None) -> str:
        """HOST:PORT from the `metrics HOST:PORT` line a process started with `--metrics-listen`
        prints on stderr once its /metrics endpoint is bound."""
        return self._announced("metrics", "stderr", f"{self.name}'s metrics line", timeout)

    def _announced(self, word: str, stream: str, what: str, timeout: float | None) -> str:
        """The HOST:PORT of the first `WORD HOST:PORT` line on `stream`, waited for."""

        def find() -> str | None:
            for line in self.stdout_lines if stream == "stdout" else self.stderr_lines:
                if line.startswith(f"{word} "):
                    return line.split()[1]
            self.check_alive()
            return None

        return wait_for(find, timeout or self.listen_timeout, what=what, error=self.error)

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.popen.wait(timeout)
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        for t in self._threads:
            t.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL if it lingers; always leaves no process behind."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._close_pipes()

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)
