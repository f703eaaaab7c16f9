"""`paradecom run` and `parallel_decompose_project` on this machine: a leader and its runners in
this process (the default: no process start-up on the critical path), or runner processes beside
it (`runner_processes`, for CPU isolation).

It is the cluster of the README, in miniature, with nothing left out: a `LeaderServer` on a free
loopback port with an in-memory store, runners that reach it over gRPC like any runner, and the
project submitted, followed and read back through `LeaderClient`. The contract is the same; only
the process boundaries are gone. With `runners="auto"` one runner holds every slot and the
leader's scheduler holds dispatch to what leader/parallelism.py allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from paradecom import limits
from paradecom.client import with_parent
from paradecom.client.leader_client import LeaderClient
from paradecom.client.run_settings import RunSettings
from paradecom.client.sequential import leader_tree
from paradecom.errors import ParaDecomError, RunInterrupted
from paradecom.leader.lifecycle import LeaseConfig
from paradecom.leader.server import LeaderServer, LeaderSettings
from paradecom.project import ProjectDefinition
from paradecom.runner.decompose import Decomposer, DecompositionSettings
from paradecom.runner.llm import ENV_ENDPOINT_ID, ENV_LLM_TIMEOUT, ENV_MAX_TOKENS
from paradecom.runner.loop import DecompositionRunner
from paradecom.runner.schema import ENV_ANSWER_PROFILE
from paradecom.tree import TaskTree
from paradecom.v1 import project_pb2

# How long a runner process may take to connect, and to exit after SIGTERM.
STOP_TIMEOUT_S = 10.0
# In-flight calls get this long once the project is over (or interrupted): nothing waits on them.
LEADER_STOP_GRACE_S = 0.2


def runner_count(settings: RunSettings) -> int:
    """Runners to start: the number asked for; with auto, one (in this process) or one process per core."""
    if not settings.auto:
        return int(settings.runners)
    return (os.cpu_count() or 1) if settings.runner_processes else 1


def slots_per_runner(settings: RunSettings, runners: int, default_concurrency: int) -> int:
    """Calls in flight per runner: with auto, enough for the most the leader will allow in all."""
    if not settings.auto:
        return settings.concurrency or default_concurrency
    return max(1, math.ceil(limits.MAX_AUTO_SLOTS / runners))


class _Child:
    """A runner process, its log file, and how to stop it."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def stop(self, *, at_once: bool) -> None:
        """SIGTERM (it releases what it holds), or SIGKILL `at_once` (the run is being interrupted
        and its leader stops too); SIGKILL after STOP_TIMEOUT_S regardless."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL if at_once else signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


async def _spawn_runner(name: str, args: Sequence[str], workdir: Path, env: dict[str, str]) -> _Child:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *with_parent.command(os.getpid(), [sys.executable, "-m", "paradecom.runner.main", *args]),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )
    return _Child(name, proc, log_path)


def runner_environment(decomposition: DecompositionSettings) -> dict[str, str]:
    """The environment of a runner process: this process's, with the settings of `decomposition`
    that a runner takes from no flag (its endpoint when this process started it, and how it calls
    it). Only the child's: this process's own environment is left as it is."""
    s = decomposition
    env = {
        **os.environ,
        ENV_MAX_TOKENS: str(s.max_tokens),
        ENV_LLM_TIMEOUT: str(s.llm_timeout_s),
        ENV_ANSWER_PROFILE: s.answer_profile,
    }
    if s.base_url:
        env["OPENAI_BASE_URL"] = s.base_url
    if s.endpoint_id:
        env[ENV_ENDPOINT_ID] = s.endpoint_id
    return env


def _runner_args(address: str, decomposition: DecompositionSettings, concurrency: int, cache: bool) -> list[str]:
    """Flags that make a runner process call the endpoint as `decomposition` says; the requests
    themselves (fan-out, re-asks) come from the leader, in every assignment."""
    s = decomposition
    args = [
        "--leader", address, "--concurrency", str(concurrency), "--model", s.model,
        "--structured-output", s.structured_output,
        "--drain-timeout", "0", "--log-level", "warning",
    ]  # fmt: skip
    return [*args, "--no-cache"] if not cache else args


async def run_locally(
    project: ProjectDefinition,
    settings: RunSettings,
    decomposition: DecompositionSettings,
    *,
    decomposer: Decomposer,
    endpoint_slots: int | None = None,
    default_concurrency: int = limits.DEFAULT_CONCURRENCY,
    on_progress: Callable[[project_pb2.ProjectSummary], None] | None = None,
) -> TaskTree:
    """Decompose `project` with a leader and `settings.runners` runners started here; the tree as
    the leader consolidated it. Cancelled, it raises RunInterrupted with the tree so far.

    Runners in this process share `decomposer` (the caller closes it): one HTTP connection
    pool, one learned structured-output mode, and the calls it started early. Runner processes
    make their own."""
    leader = LeaderServer(
        LeaderSettings(
            listen="127.0.0.1:0",
            db=":memory:",
            lease=LeaseConfig(lease_timeout_s=settings.lease_timeout, max_attempts=settings.max_attempts),
            max_depth=limits.DEFAULT_MAX_DEPTH,
            llm_rpm=settings.llm_rpm,
            llm_tpm=settings.llm_tpm,
            enforce_parallelism=settings.auto,
            endpoint_slots=endpoint_slots,
            parallelism_cap=settings.concurrency if settings.auto else None,
            request=decomposition.request,
        )
    )
    address = await leader.start()
    runners = runner_count(settings)
    concurrency = slots_per_runner(settings, runners, default_concurrency)
    workers: list[asyncio.Task[None]] = []
    local: list[DecompositionRunner] = []
    children: list[_Child] = []
    project_id = ""
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="paradecom-run-") as tmp:
        try:
            if settings.runner_processes:
                env = runner_environment(decomposition)
                args = _runner_args(address, decomposition, concurrency, settings.cache)
                for i in range(runners):
                    child = await _spawn_runner(f"runner-{i + 1}", args, Path(tmp), env)
                    children.append(child)
                    workers.append(asyncio.create_task(_exited(child), name=child.name))
            else:
                for i in range(runners):
                    runner = DecompositionRunner(
                        address, concurrency=concurrency, decomposer=decomposer, runner_id=f"local-{i + 1}"
                    )
                    local.append(runner)
                    workers.append(asyncio.create_task(runner.run(), name=f"runner-{i + 1}"))
            async with LeaderClient(address) as client:
                project_id = await client.submit(project)
                await _follow(client, project_id, workers, on_progress)
                return TaskTree.from_proto(await client.tree(project_id))
        except asyncio.CancelledError:
            interrupted = True
            if not project_id:
                raise
            raise RunInterrupted(leader_tree(leader.leader, project_id)) from None
        finally:
            for runner in local:
                # Twice: stop taking work and release what is held at once; the project is over.
                runner.request_stop()
                runner.request_stop()
            await asyncio.gather(*(c.stop(at_once=interrupted) for c in children))
            await asyncio.gather(*workers, return_exceptions=True)
            await leader.stop(LEADER_STOP_GRACE_S)


async def _exited(child: _Child) -> None:
    code = await child.proc.wait()
    if code != 0:
        raise ParaDecomError(f"{child.name} exited with status {code}: {child.tail() or 'no output'}")


async def _follow(
    client: LeaderClient,
    project_id: str,
    workers: list[asyncio.Task[None]],
    on_progress: Callable[[project_pb2.ProjectSummary], None] | None,
) -> project_pb2.ProjectSummary:
    """Wait for the project to end; if every runner stops first, nobody can finish it: say why."""
    waiting = asyncio.ensure_future(client.wait(project_id, on_progress))
    try:
        running: set[asyncio.Future[Any]] = set(workers)
        while not waiting.done():
            done, _ = await asyncio.wait({waiting, *running}, return_when=asyncio.FIRST_COMPLETED)
            running -= done
            if waiting in done or running:
                continue
            stopped = next(w for w in workers if w.done())
            error = stopped.exception() if not stopped.cancelled() else None
            reason = str(error) if error is not None else f"{stopped.get_name()} stopped"
            raise ParaDecomError(f"every runner stopped before the project was done: {reason}")
        return waiting.result()
    finally:
        waiting.cancel()
