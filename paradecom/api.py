"""The Python entry point: `parallel_decompose_project(project, runners=N) -> TaskTree`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from paradecom import limits
from paradecom.local_cluster import RunOptions, run_cluster
from paradecom.project import ProjectDefinition, load_project
from paradecom.tree import TaskTree

if TYPE_CHECKING:
    from paradecom.v1 import project_pb2


def parallel_decompose_project(
    project: ProjectDefinition | str | Path,
    runners: int = limits.DEFAULT_RUNNERS,
    *,
    concurrency: int | None = None,
    model: str | None = None,
    cache: bool = True,
) -> TaskTree:
    """Decompose `project` (a definition, or the path of a project file) into a task tree.

    `runners` runner processes, each with `concurrency` LLM calls in flight, work for a local
    leader; `runners=0` runs the sequential fallback in this process. `cache=False` asks the LLM
    even for decompositions already made. The LLM endpoint comes from
    OPENAI_BASE_URL / OPENAI_API_KEY, as for the CLI; with neither set, the embedded model (the
    `local` extra) is started for the call, `concurrency` then defaulting to 1 instead of 8, and
    this process's environment points at it until the call returns. Raises ParaDecomError
    subclasses with a one-line message on bad input, a missing endpoint or a failed run.
    """
    if isinstance(runners, bool) or not isinstance(runners, int) or not 0 <= runners <= limits.MAX_RUNNERS:
        raise ValueError(f"runners must be a whole number from 0 to {limits.MAX_RUNNERS}, not {runners!r}")
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= limits.MAX_CONCURRENCY
    ):
        raise ValueError(f"concurrency must be a whole number from 1 to {limits.MAX_CONCURRENCY}, not {concurrency!r}")
    definition = project if isinstance(project, ProjectDefinition) else load_project(project)
    definition.validate(source="project")
    return asyncio.run(decompose(definition, runners, concurrency=concurrency, model=model, cache=cache))


async def decompose(
    definition: ProjectDefinition,
    runners: int,
    *,
    concurrency: int | None = None,
    model: str | None = None,
    cache: bool = True,
    on_progress: Callable[[project_pb2.ProjectSummary], None] | None = None,
    on_embedded: Callable[[str], None] | None = None,
) -> TaskTree:
    """Decompose a validated `definition` on the configured endpoint, else on the embedded model.

    The one place `paradecom run`, `paradecom eval` and `parallel_decompose_project` choose the
    endpoint, so they cannot drift apart. Without an endpoint, `on_embedded` gets the embedded
    model's name after the check that it is installed (so a missing model is reported first) and
    before it is started: the callers' notices differ in wording, not in when they appear.
    `runners=0` runs the sequential fallback in this process, else a local cluster.
    """
    from paradecom.runner.llm import endpoint_configured

    if endpoint_configured():
        return await _on_endpoint(
            definition, runners, concurrency or limits.DEFAULT_CONCURRENCY, model, cache, None, on_progress
        )
    from paradecom import local_llm

    gguf = local_llm.check_embedded_available()
    if on_embedded is not None:
        on_embedded(local_llm.MODEL_NAME)
    async with local_llm.embedded_environment(gguf):
        concurrency = concurrency or local_llm.EMBEDDED_CONCURRENCY
        return await _on_endpoint(
            definition, runners, concurrency, model, cache, local_llm.EMBEDDED_RUNNER_SETTINGS, on_progress
        )


async def _on_endpoint(
    definition: ProjectDefinition,
    runners: int,
    concurrency: int,
    model: str | None,
    cache: bool,
    runner_settings: dict[str, int] | None,
    on_progress: Callable[[project_pb2.ProjectSummary], None] | None,
) -> TaskTree:
    if runners == 0:
        from paradecom.runner.cache import DecompositionCache
        from paradecom.runner.loop import DecompositionRunner
        from paradecom.sequential import decompose_sequentially

        runner = DecompositionRunner(
            "",
            concurrency=1,
            model=model,
            cache=DecompositionCache() if cache else None,
            **(runner_settings or {}),
        )
        return await decompose_sequentially(definition, runner, on_progress=on_progress)
    options = RunOptions(runners=runners, concurrency=concurrency, model=model, cache=cache)
    return await run_cluster(definition, options, on_progress=on_progress)
