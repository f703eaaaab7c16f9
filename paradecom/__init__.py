"""ParaDecom: break large software projects into tasks with LLMs, in parallel, across machines.

Public API (docs/architecture.md, "Entry points"):

- `parallel_decompose_project(project, runners=N) -> TaskTree`
- `ProjectDefinition`, `load_project`: the input
- `TaskTree`: the output
- `DecompositionLeader` (`generate_work_queue`, `process_results`): the leader's state machine
- `DecompositionRunner` (`run`, `decompose_task`): the runner
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The one place the version is stated: pyproject.toml reads it from here (a dynamic version).
__version__ = "0.1.0"

# Imported on first use, so a runner or the fake LLM does not load the leader and vice versa.
_EXPORTS = {
    "parallel_decompose_project": "paradecom.client.api",
    "ProjectDefinition": "paradecom.project",
    "SeedTask": "paradecom.project",
    "load_project": "paradecom.project",
    "TaskTree": "paradecom.tree",
    "DecompositionLeader": "paradecom.leader.core",
    "DecompositionRunner": "paradecom.runner.loop",
}

__all__ = [
    "DecompositionLeader",
    "DecompositionRunner",
    "ProjectDefinition",
    "SeedTask",
    "TaskTree",
    "load_project",
    "parallel_decompose_project",
]

if TYPE_CHECKING:
    from paradecom.client.api import parallel_decompose_project
    from paradecom.leader.core import DecompositionLeader
    from paradecom.project import ProjectDefinition, SeedTask, load_project
    from paradecom.runner.loop import DecompositionRunner
    from paradecom.tree import TaskTree


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'paradecom' has no attribute {name!r}")
