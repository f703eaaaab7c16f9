"""The runner: pulls tasks from the leader, asks an LLM to decompose them, submits the result."""

from .loop import DecompositionOutcome, DecompositionRunner

__all__ = ["DecompositionOutcome", "DecompositionRunner"]
