"""Errors a user can act on. Each carries a one-line message; CLIs print it and exit 2."""

from __future__ import annotations

import asyncio


class ParaDecomError(Exception):
    """Base of every error ParaDecom raises on purpose."""


class ProjectFileError(ParaDecomError):
    """A project file or definition is unreadable or invalid: the message names file, field, problem."""


class ConfigError(ParaDecomError):
    """A flag, variable or endpoint setting is missing or invalid."""


class LeaderError(ParaDecomError):
    """A call to the leader did not succeed."""


class LeaderUnavailableError(LeaderError):
    """The leader could not be reached (down, restarting, wrong address): trying later may help."""


class LeaderRefusedError(LeaderError):
    """The leader answered with an error (unknown project, invalid request): retrying won't help."""


class DecompositionError(ParaDecomError):
    """The LLM could not produce a valid decomposition of a task."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class EndpointError(ParaDecomError):
    """The LLM endpoint cannot work (nothing listening, the key refused, the model unknown): found
    before a run starts, so no project state is built for work that could never be done."""


class PartialTreeError(ParaDecomError):
    """A run ended with dead tasks (or did not finish), so the tree is missing branches. `tree` is
    what was decomposed; pass `allow_partial=True` (`--allow-partial`) to take such a tree."""

    def __init__(self, message: str, tree: object) -> None:
        super().__init__(message)
        self.tree = tree


class RunInterrupted(asyncio.CancelledError):
    """A run was cancelled (Ctrl-C, SIGTERM, a cancelled task) and stopped. Still a cancellation to
    whoever catches CancelledError; `tree` holds what was decomposed by then, for the caller to show."""

    def __init__(self, tree: object) -> None:
        super().__init__("run interrupted")
        self.tree = tree
