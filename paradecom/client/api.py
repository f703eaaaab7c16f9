"""The Python entry points: `parallel_decompose_project(project, ...) -> TaskTree`, and
`parallel_decompose_project_async` for code already inside an event loop.

`decompose` is the one place where `paradecom run`, `paradecom eval` and both functions choose
how a project is decomposed: on a remote leader, or here on the configured endpoint (checked
first), else on the embedded model; sequentially, with runners in this process, or with runner
processes.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from paradecom import limits
from paradecom.client.concurrency import ConcurrencyMeter
from paradecom.client.run_settings import AUTO, Runners, RunSettings
from paradecom.errors import ParaDecomError, PartialTreeError
from paradecom.project import ProjectDefinition, load_project
from paradecom.security import Security

if TYPE_CHECKING:
    from paradecom.runner.decompose import DecompositionSettings
    from paradecom.tree import TaskTree
    from paradecom.v1 import project_pb2

ProgressCallback = Callable[["project_pb2.ProjectSummary"], None]


def parallel_decompose_project(
    project: ProjectDefinition | str | Path,
    runners: Runners = AUTO,
    *,
    leader: str | None = None,
    concurrency: int | None = None,
    model: str | None = None,
    cache: bool = True,
    llm_rpm: int = 0,
    llm_tpm: int = 0,
    max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS,
    lease_timeout: float = limits.DEFAULT_LEASE_TIMEOUT_S,
    on_progress: ProgressCallback | None = None,
    allow_partial: bool = False,
    runner_processes: bool = False,
    security: Security | None = None,
) -> TaskTree:
    """Decompose `project` (a definition, or the path of a project file) into a task tree.

    `runners`: "auto" (as many decompositions at once as the work, the LLM budget and the machine
    allow), a number of runners (each with `concurrency` LLM calls in flight, by default
    `limits.DEFAULT_CONCURRENCY`), or 0 for the sequential fallback. They run in this process
    unless `runner_processes`. `leader` ("host:port") submits to a running leader instead, whose
    runners do the work (`security` holds its token and TLS settings). `llm_rpm`/`llm_tpm` bound the
    LLM requests and tokens per minute; `max_attempts` and `lease_timeout` are the lease rules.
    `on_progress` gets every progress summary. The endpoint comes from OPENAI_BASE_URL /
    OPENAI_API_KEY and is checked before anything starts; with neither set, the embedded model (the
    `local` extra) is started for the call (its address and settings go to the leader and runners
    started, not into os.environ). Log lines go to stdlib `logging` (loggers `paradecom.*`) unless
    structlog is configured; never to stdout.

    Raises ValueError for a bad argument, ParaDecomError subclasses with a one-line message for a
    bad project, an endpoint that cannot work (EndpointError) or a failed run, and PartialTreeError
    (its `tree` holds what was done) when tasks are dead, unless `allow_partial`. Inside a running
    event loop, use `await parallel_decompose_project_async(...)`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "parallel_decompose_project() cannot run inside a running event loop: "
            "use `await parallel_decompose_project_async(...)`"
        )
    return asyncio.run(
        parallel_decompose_project_async(
            project, runners, leader=leader, concurrency=concurrency, model=model, cache=cache,
            llm_rpm=llm_rpm, llm_tpm=llm_tpm, max_attempts=max_attempts, lease_timeout=lease_timeout,
            on_progress=on_progress, allow_partial=allow_partial, runner_processes=runner_processes,
            security=security,
        )
    )  # fmt: skip


async def parallel_decompose_project_async(
    project: ProjectDefinition | str | Path,
    runners: Runners = AUTO,
    *,
    leader: str | None = None,
    concurrency: int | None = None,
    model: str | None = None,
    cache: bool = True,
    llm_rpm: int = 0,
    llm_tpm: int = 0,
    max_attempts: int = limits.DEFAULT_MAX_ATTEMPTS,
    lease_timeout: float = limits.DEFAULT_LEASE_TIMEOUT_S,
    on_progress: ProgressCallback | None = None,
    allow_partial: bool = False,
    runner_processes: bool = False,
    security: Security | None = None,
) -> TaskTree:
    """`parallel_decompose_project`, awaitable inside a running event loop. Cancelled, it stops
    everything it started and raises RunInterrupted (a CancelledError) carrying the tree so far."""
    settings = RunSettings(
        runners=runners, concurrency=concurrency, leader=leader, model=model, cache=cache, llm_rpm=llm_rpm,
        llm_tpm=llm_tpm, lease_timeout=lease_timeout, max_attempts=max_attempts, allow_partial=allow_partial,
        runner_processes=runner_processes, security=security,
    )  # fmt: skip
    definition = project if isinstance(project, ProjectDefinition) else load_project(project)
    definition.validate(source="project")
    return await decompose(definition, settings, on_progress=on_progress)


async def decompose(
    definition: ProjectDefinition,
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    on_embedded: Callable[[str], None] | None = None,
) -> TaskTree:
    """Decompose a validated `definition` as `settings` say; the tree, with a `run` section saying
    how many decompositions ran at once. Raises PartialTreeError when the tree misses branches (dead
    tasks, a cancelled or failed project) unless `settings.allow_partial`.

    Without an endpoint, `on_embedded` gets the embedded model's name after the check that it is
    installed (so a missing model is reported first) and before it is started.
    """
    meter = ConcurrencyMeter()

    def progress(summary: project_pb2.ProjectSummary) -> None:
        meter(summary)
        if on_progress is not None:
            on_progress(summary)

    if settings.leader:
        tree = await _on_leader(definition, settings.leader, settings.security, progress)
        mode = "remote"
    else:
        tree = await _here(definition, settings, progress, on_embedded)
        mode = "sequential" if settings.sequential else ("processes" if settings.runner_processes else "in-process")
    tree.project["run"] = meter.report(settings.runners if not settings.leader else "leader", mode)
    problem = incomplete(tree)
    if problem and not settings.allow_partial:
        raise PartialTreeError(problem, tree)
    return tree


def incomplete(tree: TaskTree) -> str:
    """Why `tree` is not a whole decomposition ("" when it is): dead tasks, or a project that ended
    cancelled or failed."""
    state = tree.project.get("state")
    if state != "done":
        error = tree.project.get("error") or ""
        return f"project ended {state}" + (f": {error}" if error else "")
    dead = [t for t in tree.iter_tasks() if t.status == "dead"]
    if not dead:
        return ""
    first = dead[0]
    more = f" (and {len(dead) - 1} more)" if len(dead) > 1 else ""
    reason = " ".join((first.last_error or "no error recorded").split())
    return f"{len(dead)} task(s) dead, so their branches are missing: task {first.id} {first.title!r}: {reason}{more}"


async def _here(
    definition: ProjectDefinition,
    settings: RunSettings,
    progress: ProgressCallback,
    on_embedded: Callable[[str], None] | None,
) -> TaskTree:
    from paradecom.runner.llm import endpoint_configured

    if endpoint_configured():
        decomposition = _decomposition_settings(settings)
        return await _decompose_here(
            definition, settings, decomposition, None, limits.DEFAULT_CONCURRENCY, progress, check=True
        )
    from paradecom.client import local_llm

    gguf = local_llm.check_embedded_available()
    if on_embedded is not None:
        on_embedded(local_llm.MODEL_NAME)
    async with local_llm.embedded_server(gguf=gguf) as pool:
        return await _decompose_here(
            definition,
            settings,
            local_llm.embedded_settings(pool.base_url, settings.model),
            len(pool.servers),
            local_llm.EMBEDDED_CONCURRENCY,
            progress,
            check=False,
        )


def _decomposition_settings(settings: RunSettings) -> DecompositionSettings:
    from paradecom.errors import ConfigError
    from paradecom.runner.decompose import DecompositionSettings

    try:
        return DecompositionSettings.from_environment(settings.model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def _decompose_here(
    definition: ProjectDefinition,
    settings: RunSettings,
    decomposition: DecompositionSettings,
    endpoint_slots: int | None,
    default_concurrency: int,
    progress: ProgressCallback,
    *,
    check: bool,
) -> TaskTree:
    """Decompose on this machine; `check`: first make sure the endpoint can work (EndpointError)."""
    from paradecom.runner.cache import DecompositionCache
    from paradecom.runner.decompose import Decomposer
    from paradecom.runner.head_start import top_level_requests

    # One LLM client for the check and the whole run: one connection pool, one learned
    # structured-output mode (runner processes make their own).
    llm = decomposition.llm_client()
    try:
        decomposer = Decomposer(decomposition, llm=llm, cache=DecompositionCache() if settings.cache else None)
        top = definition.to_proto()
        head_start = settings.head_start_calls(len(top.tasks) or 1, endpoint_slots, default_concurrency)
        if head_start:
            # Sent now, answered while the endpoint is checked and the leader and the runners start
            # (runner/head_start.py). An endpoint that cannot work refuses them as it does the check.
            decomposer.start_early(top_level_requests(top, limits.DEFAULT_MAX_DEPTH, decomposition.request, head_start))
        try:
            if check:
                await llm.check_endpoint()
            if settings.sequential:
                from paradecom.client.sequential import decompose_sequentially

                return await decompose_sequentially(
                    definition, decomposer, max_attempts=settings.max_attempts, on_progress=progress
                )
            if head_start:
                # The leader's and the runners' modules (grpc among them) load in a thread, so that
                # this loop sends the early calls meanwhile; an import holds none of our state.
                await asyncio.to_thread(importlib.import_module, "paradecom.client.local_run")
            from paradecom.client.local_run import run_locally

            return await run_locally(
                definition,
                settings,
                decomposition,
                decomposer=decomposer,
                endpoint_slots=endpoint_slots,
                default_concurrency=default_concurrency,
                on_progress=progress,
            )
        finally:
            await decomposer.close()
    finally:
        await llm.close()


async def _on_leader(
    definition: ProjectDefinition, address: str, security: Security | None, progress: ProgressCallback
) -> TaskTree:
    """Submit to the leader at `address` and follow the project to its end. Cancelled, the project
    goes on at the leader (`paradecom watch` follows it); RunInterrupted carries the tree so far."""
    from paradecom.client.leader_client import LeaderClient
    from paradecom.errors import RunInterrupted
    from paradecom.tree import TaskTree

    async with LeaderClient(address, security) as client:
        project_id = await client.submit(definition)
        try:
            await client.wait(project_id, progress)
        except asyncio.CancelledError:
            try:
                async with asyncio.timeout(1.0):
                    partial = TaskTree.from_proto(await client.tree(project_id))
            except (TimeoutError, ParaDecomError):
                raise RunInterrupted(None) from None
            raise RunInterrupted(partial) from None
        return TaskTree.from_proto(await client.tree(project_id))
