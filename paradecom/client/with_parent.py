"""`python -m paradecom.client.with_parent PARENT_PID COMMAND...`: run COMMAND, and have the kernel kill it
(SIGKILL) when the process PARENT_PID exits.

`paradecom run` starts a leader, runners and the embedded model's server as child processes and
stops them on the way out; but a `paradecom run` that is SIGKILLed (or OOM-killed) has no way out,
and its children would live on: runners reconnecting to a leader that is gone, a model server
holding a gigabyte. Linux's parent-death signal (prctl PR_SET_PDEATHSIG) covers that case. SIGKILL, not SIGTERM: a
runner's SIGTERM drains for up to 30 s towards a leader that is gone too, and nothing the children
hold needs saving (the leader's store is durable, a runner's leases expire). It is
set here, in a process of its own that then execs COMMAND (the setting survives exec), rather than
in a `preexec_fn`, which is unsafe in a parent with threads (grpc's). Elsewhere than Linux the
command simply runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def command(parent_pid: int, argv: list[str]) -> list[str]:
    """The command line that runs `argv` as a child of `parent_pid` that dies with it."""
    return [sys.executable, "-m", "paradecom.client.with_parent", str(parent_pid), *argv]


def main() -> None:
    parent, argv = int(sys.argv[1]), sys.argv[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died before the signal was asked for.
        if os.getppid() != parent:
            sys.exit(143)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
