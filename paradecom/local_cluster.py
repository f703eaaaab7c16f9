"""`paradecom run` and `parallel_decompose_project`: a leader and N runner processes on this
machine, the project submitted, followed, its tree read, and every process stopped at the end.

The leader keeps its store in a temporary directory that lives as long as the run. Children log at
warning level to files in that directory; when something goes wrong the tail of each is quoted in
the error, so a failed run explains itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paradecom import with_parent
from paradecom.client import LeaderClient
from paradecom.errors import ParaDecomError
from paradecom.project import ProjectDefinition
from paradecom.tree import TaskTree
from paradecom.v1 import project_pb2

# How long a child may take to start serving, and to exit after SIGTERM.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


@dataclass(frozen=True)
class RunOptions:
    """How to run a project locally."""

    runners: int = 2
    concurrency: int = 8
    model: str | None = None
    lease_timeout_s: float = 30.0
    log_level: str = "warning"
    cache: bool = True


class _Child:
    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


async def _spawn(name: str, args: list[str], workdir: Path) -> _Child:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *with_parent.command(os.getpid(), [sys.executable, *args]),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL,
        )
    return _Child(name, proc, log_path)


async def _listening_address(child: _Child) -> str:
    assert child.proc.stdout is not None
    try:
        line = await asyncio.wait_for(child.proc.stdout.readline(), START_TIMEOUT_S)
    except TimeoutError:
        line = b""
    text = line.decode(errors="replace").strip()
    if not text.startswith("listening "):
        await child.stop()
        raise ParaDecomError(f"the {child.name} did not start: {child.tail() or 'no output'}")
    return text.split()[1]


async def run_cluster(
    project: ProjectDefinition,
    options: RunOptions,
    on_progress: Callable[[project_pb2.ProjectSummary], None] | None = None,
) -> TaskTree:
    """Decompose `project` with a local leader and `options.runners` runner processes."""
    project.validate(source="project")
    with tempfile.TemporaryDirectory(prefix="paradecom-run-") as tmp:
        workdir = Path(tmp)
        log_flags = ["--log-level", options.log_level]
        leader = await _spawn(
            "leader",
            ["-m", "paradecom.leader.main", "--listen", "127.0.0.1:0", "--db", str(workdir / "leader.db"),
             "--lease-timeout", str(options.lease_timeout_s), *log_flags],
            workdir,
        )  # fmt: skip
        children = [leader]
        try:
            address = await _listening_address(leader)
            runner_args = ["--leader", address, "--concurrency", str(options.concurrency), *log_flags]
            if options.model:
                runner_args += ["--model", options.model]
            if not options.cache:
                runner_args.append("--no-cache")
            for i in range(options.runners):
                children.append(await _spawn(f"runner-{i + 1}", ["-m", "paradecom.runner.main", *runner_args], workdir))
            async with LeaderClient(address) as client:
                project_id = await client.submit(project)
                waiting = asyncio.create_task(client.wait(project_id, on_progress))
                exits = [asyncio.create_task(c.proc.wait()) for c in children]
                # Every child exiting early means nobody can finish the work: say why instead of hanging.
                while not waiting.done():
                    await asyncio.wait([waiting, *exits], return_when=asyncio.FIRST_COMPLETED)
                    if leader.proc.returncode is not None or all(c.proc.returncode is not None for c in children[1:]):
                        if waiting.done():
                            break
                        waiting.cancel()
                        dead = next((c for c in children if c.proc.returncode is not None), leader)
                        raise ParaDecomError(
                            f"the {dead.name} exited with status {dead.proc.returncode}: {dead.tail() or 'no output'}"
                        )
                    exits = [e for e in exits if not e.done()]
                for e in exits:
                    e.cancel()
                summary = waiting.result()
                tree = await client.tree(project_id)
            if summary.state != project_pb2.PROJECT_STATE_DONE:
                raise ParaDecomError(f"project ended {project_pb2.ProjectState.Name(summary.state)}: {summary.error}")
            return TaskTree.from_proto(tree)
        finally:
            # Runners first, so they release their leases to a leader that is still there.
            await asyncio.gather(*(c.stop() for c in children[1:]))
            await leader.stop()
