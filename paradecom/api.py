"""The Python entry point: `parallel_decompose_project(project, runners=N) -> TaskTree`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from paradecom import limits
from paradecom.local_cluster import RunOptions, run_cluster
from paradecom.project import ProjectDefinition, load_project
from paradecom.tree import TaskTree

DEFAULT_RUNNERS = 2


def parallel_decompose_project(
    project: ProjectDefinition | str | Path,
    runners: int = DEFAULT_RUNNERS,
    *,
    concurrency: int = 8,
    model: str | None = None,
    cache: bool = True,
) -> TaskTree:
    """Decompose `project` (a definition, or the path of a project file) into a task tree.

    `runners` runner processes, each with `concurrency` LLM calls in flight, work for a local
    leader; `runners=0` runs the sequential fallback in this process. `cache=False` asks the LLM
    even for decompositions already made. The LLM endpoint comes from
    OPENAI_BASE_URL / OPENAI_API_KEY, as for the CLI. Raises ParaDecomError subclasses with a
    one-line message on bad input or a failed run.
    """
    if isinstance(runners, bool) or not isinstance(runners, int) or not 0 <= runners <= limits.MAX_RUNNERS:
        raise ValueError(f"runners must be a whole number from 0 to {limits.MAX_RUNNERS}, not {runners!r}")
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= limits.MAX_CONCURRENCY
    ):
        raise ValueError(f"concurrency must be a whole number from 1 to {limits.MAX_CONCURRENCY}, not {concurrency!r}")
    definition = project if isinstance(project, ProjectDefinition) else load_project(project)
    definition.validate(source="project")
    if runners == 0:
        return asyncio.run(_sequential(definition, model, cache))
    options = RunOptions(runners=runners, concurrency=concurrency, model=model, cache=cache)
    return asyncio.run(run_cluster(definition, options))


async def _sequential(definition: ProjectDefinition, model: str | None, cache: bool) -> TaskTree:
    from paradecom.runner.cache import DecompositionCache
    from paradecom.runner.loop import DecompositionRunner
    from paradecom.sequential import decompose_sequentially

    runner = DecompositionRunner("", concurrency=1, model=model, cache=DecompositionCache() if cache else None)
    return await decompose_sequentially(definition, runner)
