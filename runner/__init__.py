"""The runner: pulls tasks from the leader, asks an LLM to decompose them, submits the result."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: `paradecom-runner` imports this package before its `main` can make a
# SIGTERM harmless, and `.loop` (grpc, openai) is most of a second of that.
_EXPORTS = {"DecompositionOutcome": "paradecom.runner.decompose", "DecompositionRunner": "paradecom.runner.loop"}

__all__ = ["DecompositionOutcome", "DecompositionRunner"]

if TYPE_CHECKING:
    from .decompose import DecompositionOutcome
    from .loop import DecompositionRunner


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'paradecom.runner' has no attribute {name!r}")
